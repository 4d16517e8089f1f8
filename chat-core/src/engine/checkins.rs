//! Check-ins and mood check-ins (PROTOCOL.md 5.3): a question posted in a
//! chat that the other members answer by picking an option.
//!
//! A check-in is a message of type `checkin` whose payload (prompt,
//! options, anonymity, closing time) is stored as its body, so that
//! encryption at rest seals it as any text. Answers are stored one per
//! user and check-in, changeable until it closes. Who answered what is
//! for the poster and the group's admins only (for nobody when the
//! check-in is anonymous); the poster's connections get the running
//! counts (`checkin_answered`), other members nothing.
//!
//! A mood check-in asks for a 1..=5 scale; a member's answer also goes to
//! the host app's notifier (its webhook) when that member opted in with
//! `set_privacy {mood_sharing: true}`.

use serde::{Deserialize, Serialize};

use super::{Actor, ChatEngine, validate::client_msg_id};
use crate::{
    bus::{Action, Audience},
    care::MoodSignal,
    error::{Error, Result},
    event::ServerEvent,
    model::{
        Chat, ChatId, ChatKind, Checkin, CheckinKind, Encryption, Message, MessageId, MessageType,
        Role, Timestamp, UserId,
    },
    store::{CheckinAnswer, NewMessage},
};

/// Longest prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 500;
/// Longest option, in characters.
pub const MAX_OPTION_CHARS: usize = 100;
/// Fewest and most options of a check-in.
const OPTIONS: std::ops::RangeInclusive<usize> = 2..=10;

/// `create_checkin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCheckin {
    /// Where.
    pub chat_id: ChatId,
    /// The poster's idempotency key, as for `send_message`.
    pub client_msg_id: String,
    /// The question.
    pub prompt: String,
    /// What one may answer (2..=10); absent for a mood check-in.
    #[serde(default)]
    pub options: Option<Vec<String>>,
    /// Hide who answered what from everyone.
    #[serde(default)]
    pub anonymous: Option<bool>,
    /// Answers are refused after this.
    #[serde(default)]
    pub closes_at: Option<Timestamp>,
    /// `poll` (default) or `mood`.
    #[serde(default)]
    pub kind: Option<CheckinKind>,
}

/// `checkin_results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckinResults {
    /// Answers per option.
    pub counts: Vec<u64>,
    /// Answers in all.
    pub total: u64,
    /// Who answered what; `None` for an anonymous check-in.
    pub answers: Option<Vec<GivenAnswer>>,
}

/// One member's answer in [`CheckinResults`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GivenAnswer {
    /// Who.
    pub user_id: UserId,
    /// The option's index.
    pub option: u32,
}

impl ChatEngine {
    /// Posts a check-in: a group's admins and moderators, or either side
    /// of a direct chat; not in e2ee chats (the server keeps the answers,
    /// so it must read the question). A retry of the same `client_msg_id`
    /// returns the stored check-in.
    pub async fn create_checkin(&self, actor: &Actor, req: NewCheckin) -> Result<Message> {
        client_msg_id(&req.client_msg_id)?;
        let cached = self.cached_chat(actor, req.chat_id).await?;
        if let Some(stored) = self
            .stored_retry(actor, req.chat_id, &req.client_msg_id)
            .await?
        {
            return Ok(stored);
        }
        let chat = &cached.chat;
        if chat.encryption == Encryption::E2ee {
            return Err(Error::invalid("check-ins are not available in e2ee chats"));
        }
        if chat.kind == ChatKind::Group {
            let role = chat.participant(&actor.user_id).map(|p| p.role);
            if !matches!(role, Some(Role::Admin | Role::Moderator)) {
                return Err(Error::forbidden(
                    "only a group's admins and moderators post check-ins",
                ));
            }
        }
        if cached.blocked {
            return Err(Error::forbidden("you cannot write to this user"));
        }
        let checkin = self.checked_checkin(&req)?;
        let content = serde_json::to_string(&checkin).map_err(Error::backend)?;
        let new = NewMessage {
            mls: None,
            id: MessageId::new(),
            chat_id: req.chat_id,
            sender_id: actor.user_id.clone(),
            kind: MessageType::Checkin,
            content: Some(content),
            media: None,
            reply_to: None,
            client_msg_id: Some(req.client_msg_id),
            system: None,
            created_at: self.now(),
        };
        Ok(self.submit_post(&cached, new, None).await?.0)
    }

    /// The check-in `req` asks for, once its fields are checked.
    fn checked_checkin(&self, req: &NewCheckin) -> Result<Checkin> {
        let prompt = req.prompt.trim();
        if prompt.is_empty() || prompt.chars().count() > MAX_PROMPT_CHARS {
            return Err(Error::invalid(format!(
                "prompt must be 1..={MAX_PROMPT_CHARS} characters"
            )));
        }
        let kind = req.kind.unwrap_or_default();
        let options = match (kind, &req.options) {
            (CheckinKind::Mood, None) => (1..=5).map(|v: u8| v.to_string()).collect(),
            (CheckinKind::Mood, Some(_)) => {
                return Err(Error::invalid("a mood check-in takes no options (1..=5)"));
            }
            (CheckinKind::Poll, None) => {
                return Err(Error::invalid("options are required"));
            }
            (CheckinKind::Poll, Some(options)) => {
                if !OPTIONS.contains(&options.len()) {
                    return Err(Error::invalid("a check-in has 2..=10 options"));
                }
                let mut checked = Vec::with_capacity(options.len());
                for option in options {
                    let option = option.trim();
                    if option.is_empty() || option.chars().count() > MAX_OPTION_CHARS {
                        return Err(Error::invalid(format!(
                            "each option must be 1..={MAX_OPTION_CHARS} characters"
                        )));
                    }
                    checked.push(option.to_owned());
                }
                checked
            }
        };
        if req.closes_at.is_some_and(|at| at <= self.now()) {
            return Err(Error::invalid("closes_at must be in the future"));
        }
        Ok(Checkin {
            kind,
            prompt: prompt.to_owned(),
            options,
            anonymous: req.anonymous.unwrap_or(false),
            closes_at: req.closes_at,
        })
    }

    /// The check-in `message_id` the actor may see, with its chat and
    /// payload.
    async fn checkin_of(
        &self,
        actor: &Actor,
        message_id: MessageId,
    ) -> Result<(Chat, Message, Checkin)> {
        let (chat, message) = self.message_of(actor, message_id).await?;
        if message.deleted {
            return Err(Error::not_found("the check-in was deleted"));
        }
        match (message.kind, message.checkin.clone()) {
            (MessageType::Checkin, Some(checkin)) => Ok((chat, message, checkin)),
            (MessageType::Checkin, None) => Err(Error::not_found("the check-in cannot be read")),
            _ => Err(Error::invalid("message_id is not a check-in")),
        }
    }

    /// Answers a check-in (`option`: an index into its options); a later
    /// answer replaces the earlier one until it closes. Participants
    /// other than the poster. The poster's connections get the counts.
    pub async fn answer_checkin(
        &self,
        actor: &Actor,
        message_id: MessageId,
        option: u32,
    ) -> Result<()> {
        let (chat, message, checkin) = self.checkin_of(actor, message_id).await?;
        if message.sender_id == actor.user_id {
            return Err(Error::forbidden(
                "the poster does not answer their check-in",
            ));
        }
        if option as usize >= checkin.options.len() {
            return Err(Error::invalid(format!(
                "option must be 0..{}",
                checkin.options.len()
            )));
        }
        let now = self.now();
        if checkin.closes_at.is_some_and(|at| at <= now) {
            return Err(Error::conflict("the check-in is closed"));
        }
        let answer = CheckinAnswer {
            message_id,
            chat_id: message.chat_id,
            user_id: actor.user_id.clone(),
            option,
            at: now,
        };
        self.inner.store.answer_checkin(answer).await?;
        let answers = self.inner.store.checkin_answers(message_id).await?;
        let (counts, total) = counts(&checkin, &answers);
        let event = ServerEvent::CheckinAnswered {
            chat_id: message.chat_id,
            message_id,
            counts,
            total,
        };
        // The counts are for the poster while they are in the chat: one
        // who left learns nothing more of it (their results are refused
        // too, as to any outsider).
        if chat
            .participants
            .iter()
            .any(|p| p.user_id == message.sender_id)
        {
            let poster = Audience::users(vec![message.sender_id.clone()]);
            self.publish(poster, Action::Event(event.encode())).await;
        }
        if checkin.kind == CheckinKind::Mood {
            self.share_mood(actor, &message, option, now).await;
        }
        Ok(())
    }

    /// Hands a mood answer to the notifier, if the user opted in.
    async fn share_mood(&self, actor: &Actor, message: &Message, option: u32, at: Timestamp) {
        let Some(notifier) = &self.inner.notifier else {
            return;
        };
        match self.privacy_of(&actor.user_id).await {
            Ok(privacy) if privacy.mood_sharing => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not read a user's mood sharing; not shared");
                return;
            }
        }
        let signal = MoodSignal {
            user_id: actor.user_id.clone(),
            chat_id: message.chat_id,
            value: u8::try_from(option + 1).unwrap_or(u8::MAX),
            at,
        };
        if let Err(e) = notifier.mood(&signal).await {
            tracing::warn!(error = %e, "the notifier failed a mood signal");
        }
    }

    /// The results of a check-in: the poster and the group's admins;
    /// who answered what is left out of an anonymous one.
    pub async fn checkin_results(
        &self,
        actor: &Actor,
        message_id: MessageId,
    ) -> Result<CheckinResults> {
        let (chat, message, checkin) = self.checkin_of(actor, message_id).await?;
        let admin = chat.kind == ChatKind::Group
            && chat.participant(&actor.user_id).map(|p| p.role) == Some(Role::Admin);
        if message.sender_id != actor.user_id && !admin {
            return Err(Error::forbidden(
                "only the poster and the group's admins see the results",
            ));
        }
        let answers = self.inner.store.checkin_answers(message_id).await?;
        let (counts, total) = counts(&checkin, &answers);
        let answers = (!checkin.anonymous).then(|| {
            answers
                .into_iter()
                .map(|a| GivenAnswer {
                    user_id: a.user_id,
                    option: a.option,
                })
                .collect()
        });
        Ok(CheckinResults {
            counts,
            total,
            answers,
        })
    }
}

/// Answers per option of `checkin`, and in all.
fn counts(checkin: &Checkin, answers: &[CheckinAnswer]) -> (Vec<u64>, u64) {
    let mut counts = vec![0u64; checkin.options.len()];
    for a in answers {
        if let Some(n) = counts.get_mut(a.option as usize) {
            *n += 1;
        }
    }
    (counts, answers.len() as u64)
}

#[cfg(test)]
mod tests;
