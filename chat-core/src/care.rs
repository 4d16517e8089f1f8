//! Care features of a health app: crisis escalation (PROTOCOL.md 5.3) and
//! the phrase matching it and the word filter share.
//!
//! # Matching
//!
//! Phrases and messages are compared in one normal form: compatibility
//! decomposition (NFKD, `unicode-normalization`), combining marks removed
//! (so "díe" reads as "die"), then Unicode default case folding
//! (`caseless`), so that "WANT to díe" matches "want to die". A match
//! counts only on whole words: the characters on either side of it must
//! not be letters or digits, so "want to dieter" does not match "want to
//! die". All phrases are found in one pass of an Aho-Corasick automaton
//! (`aho-corasick`) built once when the engine starts. ASCII text (most
//! messages) is searched where it is, case-insensitively, without a copy
//! (folding ASCII is lowercasing it); other text is folded one character
//! at a time into one buffer.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use caseless::Caseless;
use serde::{Deserialize, Serialize};
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

use crate::{
    error::{Error, Result},
    model::{ChatId, MessageId, Timestamp, UserId},
};

/// Longest phrase accepted, in characters.
pub const MAX_PHRASE_CHARS: usize = 200;
/// Most phrases one matcher holds.
pub const MAX_PHRASES: usize = 10_000;

/// Phrases found in text on whole words, case- and accent-insensitively
/// (see the module docs).
#[derive(Debug, Clone)]
pub struct PhraseMatcher {
    automaton: AhoCorasick,
    /// The phrases as configured, by pattern index.
    phrases: Vec<String>,
}

impl PhraseMatcher {
    /// A matcher of `phrases`: each 1..=[`MAX_PHRASE_CHARS`] characters
    /// with a letter or digit in it, at most [`MAX_PHRASES`].
    pub fn new<S: AsRef<str>>(phrases: &[S]) -> Result<Self> {
        if phrases.len() > MAX_PHRASES {
            return Err(Error::invalid(format!(
                "at most {MAX_PHRASES} phrases, got {}",
                phrases.len()
            )));
        }
        let mut folded = Vec::with_capacity(phrases.len());
        for phrase in phrases {
            let phrase = phrase.as_ref();
            let chars = phrase.chars().count();
            let mut normal = String::new();
            fold_into(phrase, &mut normal);
            let normal = normal.trim().to_owned();
            if chars > MAX_PHRASE_CHARS || !normal.chars().any(char::is_alphanumeric) {
                return Err(Error::invalid(format!(
                    "a phrase needs 1..={MAX_PHRASE_CHARS} characters with a letter or digit, \
                     got {phrase:?}"
                )));
            }
            folded.push(normal);
        }
        // A DFA is the fastest search (no failure transitions to follow)
        // but takes memory per state and byte class: for the short lists
        // a host app configures (up to 16 KiB of phrases, a few MiB at
        // most); longer lists get the crate's choice.
        let total: usize = folded.iter().map(String::len).sum();
        let kind = (total <= 16 * 1024).then_some(AhoCorasickKind::DFA);
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            .kind(kind)
            .build(&folded)
            .map_err(|e| Error::invalid(format!("the phrases do not make a matcher: {e}")))?;
        Ok(Self {
            automaton,
            phrases: phrases.iter().map(|p| p.as_ref().to_owned()).collect(),
        })
    }

    /// Whether the matcher has no phrase.
    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// The first configured phrase found in `text` on whole words (by
    /// position in the text), as configured.
    pub fn find(&self, text: &str) -> Option<&str> {
        if self.phrases.is_empty() {
            return None;
        }
        if text.is_ascii() {
            return self.find_in(text);
        }
        let mut normal = String::with_capacity(text.len());
        fold_into(text, &mut normal);
        self.find_in(&normal)
    }

    /// The phrase on whole words in `text` (in normal form, or ASCII)
    /// that starts first, the longest of those. Every match is looked at
    /// (overlapping), so that a candidate refused for its boundaries ("kill
    /// myself" in "kill myselfish") hides no other ("kill").
    fn find_in(&self, text: &str) -> Option<&str> {
        self.automaton
            .find_overlapping_iter(text)
            .filter(|m| whole_words(text, m.start(), m.end()))
            .min_by_key(|m| (m.start(), std::cmp::Reverse(m.end())))
            .map(|m| self.phrases[m.pattern().as_usize()].as_str())
    }
}

/// Appends `text` in the matcher's normal form to `out`: each character
/// decomposed (NFKD), combining marks dropped, the rest case-folded. One
/// pass, no buffer but `out` (marks are dropped, so the canonical reordering
/// of full NFKD has nothing to order).
fn fold_into(text: &str, out: &mut String) {
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        decompose_compatible(c, |d| {
            if !is_combining_mark(d) {
                out.extend(std::iter::once(d).default_case_fold());
            }
        });
    }
}

/// Whether `text[start..end]` stands on whole words: no letter or digit
/// right before or right after it.
fn whole_words(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// What a [`WordFilter`] does with a message that has one of its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// Refuse it: the sender gets `forbidden` with the filter's reason.
    Reject,
    /// Store and deliver it, and file a report (reporter `system`) for
    /// moderators.
    Flag,
}

/// A [`MessageHook`](crate::MessageHook) that rejects or flags messages
/// containing one of its words or phrases, matched as crisis phrases are
/// (whole words, without case or accents). It runs before a message is
/// stored, on at-rest chats only, and never on a retry of a stored message.
#[derive(Debug, Clone)]
pub struct WordFilter {
    matcher: PhraseMatcher,
    action: FilterAction,
    reason: String,
}

impl WordFilter {
    /// A filter of `words` doing `action`; `reason` is what the sender is
    /// told (reject) or what the report says (flag), followed by the word
    /// found when flagging.
    pub fn new<S: AsRef<str>>(words: &[S], action: FilterAction, reason: &str) -> Result<Self> {
        Ok(Self {
            matcher: PhraseMatcher::new(words)?,
            action,
            reason: reason.to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl crate::MessageHook for WordFilter {
    async fn before_store(
        &self,
        ctx: &crate::hooks::HookContext<'_>,
    ) -> Result<crate::hooks::HookDecision> {
        use crate::hooks::HookDecision;
        let Some(found) = ctx.content.and_then(|text| self.matcher.find(text)) else {
            return Ok(HookDecision::Allow);
        };
        Ok(match self.action {
            FilterAction::Reject => HookDecision::Reject {
                reason: self.reason.clone(),
            },
            FilterAction::Flag => HookDecision::Flag {
                reason: format!("{}: {found}", self.reason),
            },
        })
    }
}

/// A place to turn to, shown to a user whose message matched a crisis
/// phrase (`support_resources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportResource {
    /// What it is, e.g. "Crisis line".
    pub title: String,
    /// Where (https).
    #[serde(default)]
    pub url: Option<String>,
    /// Whom to call.
    #[serde(default)]
    pub phone: Option<String>,
}

/// The host app's crisis escalation (PROTOCOL.md 5.3, `[crisis]`).
#[derive(Debug, Clone)]
pub struct CrisisConfig {
    /// The phrases that raise an alert.
    pub matcher: PhraseMatcher,
    /// Who gets `crisis_alert`, on every connection.
    pub responders: Vec<UserId>,
    /// What the sender is shown.
    pub resources: Vec<SupportResource>,
}

impl CrisisConfig {
    /// Escalation of `phrases` to `responders`, showing `resources` to the
    /// sender. Fails on a phrase the matcher refuses, or a resource
    /// without a title or whose URL is not https.
    pub fn new<S: AsRef<str>>(
        phrases: &[S],
        responders: Vec<UserId>,
        resources: Vec<SupportResource>,
    ) -> Result<Self> {
        for r in &resources {
            if r.title.trim().is_empty() || r.title.chars().count() > 200 {
                return Err(Error::invalid(
                    "a resource needs a title of 1..=200 characters",
                ));
            }
            if let Some(url) = &r.url {
                crate::engine::validate::https_url(url)?;
            }
        }
        Ok(Self {
            matcher: PhraseMatcher::new(phrases)?,
            responders,
            resources,
        })
    }
}

/// A member's answer to a mood check-in, for the host app (PROTOCOL.md
/// 5.3: its webhook gets `{"type": "mood", user_id, chat_id, value, at}`),
/// handed over only for members who opted in (`mood_sharing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoodSignal {
    /// Who.
    pub user_id: UserId,
    /// In which chat.
    pub chat_id: ChatId,
    /// 1..=5.
    pub value: u8,
    /// When they answered.
    pub at: Timestamp,
}

/// `crisis_alert`: a message matched a crisis phrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrisisAlert {
    /// Its chat.
    pub chat_id: ChatId,
    /// The message.
    pub message_id: MessageId,
    /// Who wrote it.
    pub sender_id: UserId,
    /// The configured phrase it matched.
    pub matched: String,
    /// When it was written (or edited).
    pub at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(phrases: &[&str]) -> PhraseMatcher {
        PhraseMatcher::new(phrases).unwrap()
    }

    #[test]
    fn phrases_match_whole_words_without_case_or_accents() {
        let m = matcher(&["want to die", "kill myself"]);
        for (text, found) in [
            ("I want to die", Some("want to die")),
            ("WANT to díe", Some("want to die")),
            ("i Want To Die.", Some("want to die")),
            ("want to dieter", None),
            ("I dont want to diet", None),
            ("swant to die", None),
            ("sometimes I want to die, really", Some("want to die")),
            ("i could KILL MYSELF", Some("kill myself")),
            ("kill myselfish", None),
            ("", None),
            // Full-width letters decompose to ASCII (NFKD).
            ("ｗａｎｔ ｔｏ ｄｉｅ", Some("want to die")),
        ] {
            assert_eq!(m.find(text), found, "{text:?}");
        }
    }

    #[test]
    fn a_refused_candidate_does_not_hide_a_later_one() {
        let m = matcher(&["die", "want to die"]);
        assert_eq!(m.find("dieter and then die"), Some("die"));
        assert_eq!(m.find("want to die"), Some("want to die"));
        let m = matcher(&["kill", "kill myself"]);
        assert_eq!(m.find("kill myselfish"), Some("kill"));
        assert_eq!(m.find("I could kill myself"), Some("kill myself"));
    }

    #[test]
    fn folding_covers_what_lowercasing_misses() {
        let m = matcher(&["straße", "Ἀγάπη"]);
        assert_eq!(m.find("STRASSE"), Some("straße"));
        assert_eq!(m.find("αγαπη"), Some("Ἀγάπη"));
    }

    #[test]
    fn a_long_list_builds_and_matches() {
        let phrases: Vec<String> = (0..MAX_PHRASES)
            .map(|i| format!("phrase number {i}"))
            .collect();
        let m = PhraseMatcher::new(&phrases).unwrap();
        assert_eq!(
            m.find("and PHRASE number 9999!"),
            Some("phrase number 9999")
        );
        assert_eq!(m.find("phrase number 99999"), None);
        assert!(PhraseMatcher::new(&vec!["x"; MAX_PHRASES + 1]).is_err());
    }

    #[test]
    fn bad_phrases_are_refused() {
        for bad in ["", "   ", "!!!", &"x".repeat(MAX_PHRASE_CHARS + 1)] {
            assert!(PhraseMatcher::new(&[bad]).is_err(), "{bad:?}");
        }
        assert!(matcher(&[]).find("anything").is_none());
    }
}
