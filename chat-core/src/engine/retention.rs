//! Retention ("disappearing messages"): a chat's setting, and the sweep
//! that removes its messages once they are older than that.
//!
//! The sweep reads each chat's log from its watermark (everything up to it
//! was swept) in seq order, which follows time, and stops at the first
//! message that is not old enough: messages need no index by time. Old
//! user messages become tombstones through the chat's write lane, as a
//! deletion by their sender does (`message_deleted`, a new `updated_seq`
//! that `sync` brings to devices), and their uploads are removed; then the
//! watermark moves past them. Each call does bounded work, and each
//! deletion is one change of its own in the lanes, so sends are never held
//! up for more than a batch.

use futures::future::join_all;

use super::{
    Actor, ChatEngine,
    writer::{EventKind, Fanout},
};
use crate::{
    error::{Error, Result},
    model::{AuditAction, AuditTarget, Chat, ChatId, ChatKind, ChatView, Role, Timestamp},
    store::{Applied, Change, RetentionChat},
};

/// The shortest retention a chat may have, in seconds (an hour).
pub const MIN_RETENTION_SECS: u64 = 3600;
/// The longest retention a chat may have, in seconds (365 days).
pub const MAX_RETENTION_SECS: u64 = 31_536_000;
/// Most messages one [`ChatEngine::sweep_retention`] call looks at (and so
/// removes).
pub const RETENTION_SWEEP_MAX: usize = 500;
/// Most messages of one chat looked at per visit, before the sweep goes on
/// to the next chat.
const PER_CHAT: usize = 100;
/// Chats with a retention read per page.
const CHATS_PAGE: usize = 100;

impl ChatEngine {
    /// Sets how long the chat keeps messages (`None`: forever; otherwise
    /// [`MIN_RETENTION_SECS`]`..=`[`MAX_RETENTION_SECS`]): a group's
    /// admins, or either side of a direct chat. Recorded by a `system`
    /// message; participants get `chat_updated`. Setting the retention the
    /// chat has changes nothing.
    pub async fn set_retention(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        seconds: Option<u64>,
    ) -> Result<ChatView> {
        let chat = self.chat_of(actor, chat_id).await?;
        let change = self.retention_change(&chat, actor, seconds)?;
        self.apply_retention(actor, &chat, change, seconds).await
    }

    /// Commits a change from [`retention_change`](Self::retention_change);
    /// a group admin's is audited (in a direct chat it is a participant's
    /// own choice, not moderation).
    pub(super) async fn apply_retention(
        &self,
        actor: &Actor,
        chat: &Chat,
        change: Change,
        seconds: Option<u64>,
    ) -> Result<ChatView> {
        let view = self.chat_change(actor, change).await?;
        if chat.kind == ChatKind::Group {
            let note = seconds.map_or_else(|| "forever".to_owned(), |s| format!("{s} s"));
            self.audit(
                actor,
                AuditAction::SetRetention,
                AuditTarget::Chat,
                chat.id,
                Some(chat.id),
                Some(note),
            )
            .await;
        }
        Ok(view)
    }

    /// The change that sets `chat`'s retention to `seconds`, once the value
    /// and the actor's right to set it are checked (before anything is
    /// written; the right is checked again at commit, where a demotion
    /// committed meanwhile counts).
    pub(super) fn retention_change(
        &self,
        chat: &Chat,
        actor: &Actor,
        seconds: Option<u64>,
    ) -> Result<Change> {
        let needs = match chat.kind {
            ChatKind::Direct => Role::Member,
            ChatKind::Group => {
                if chat.participant(&actor.user_id).map(|p| p.role) != Some(Role::Admin) {
                    return Err(Error::forbidden("only admins may set a group's retention"));
                }
                Role::Admin
            }
        };
        if let Some(s) = seconds {
            if !(MIN_RETENTION_SECS..=MAX_RETENTION_SECS).contains(&s) {
                return Err(Error::invalid(format!(
                    "seconds must be null or {MIN_RETENTION_SECS}..={MAX_RETENTION_SECS}, got {s}"
                )));
            }
        }
        let change = Change::SetRetention {
            chat_id: chat.id,
            seconds,
            by: actor.user_id.clone(),
            at: self.now(),
        };
        Ok(change.authorized(&actor.user_id, needs))
    }

    /// Removes messages older than their chat's retention, for everyone:
    /// user messages (`text`, `image`, `voice`, `file`) become tombstones
    /// and their uploads are deleted; `system` and `mls_commit` entries
    /// stay. Looks at most at [`RETENTION_SWEEP_MAX`] messages, at most 100
    /// of one chat before going on to the next, and goes on where the last
    /// call stopped; returns how many it removed. The server calls it every
    /// 30 seconds (again at once while it finds work); embedders call it
    /// from a timer of their own.
    pub async fn sweep_retention(&self) -> Result<usize> {
        let now = self.now();
        let mut after = *self
            .inner
            .retention_cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (mut looked, mut removed) = (0, 0);
        // Whether this round began at the first chat, and whether a chat of
        // it had more to look at than one visit.
        let (mut whole_round, mut more) = (after.is_none(), false);
        let swept = loop {
            let page = match self.inner.store.retention_chats(after, CHATS_PAGE).await {
                Ok(page) => page,
                Err(e) => break Err(e),
            };
            for chat in &page {
                if looked >= RETENTION_SWEEP_MAX {
                    break;
                }
                let budget = PER_CHAT.min(RETENTION_SWEEP_MAX - looked);
                let visit = self.sweep_chat(chat, now, budget).await;
                looked += visit.looked;
                removed += visit.removed;
                more |= visit.looked == budget;
                after = Some(chat.chat_id);
                // The lanes take the sends that queued meanwhile.
                tokio::task::yield_now().await;
            }
            if looked >= RETENTION_SWEEP_MAX {
                break Ok(removed);
            }
            if page.len() < CHATS_PAGE {
                // The end of a round: another one if the call began in
                // the middle (the chats before the cursor), or if a chat
                // had more.
                after = None;
                if whole_round && !more {
                    break Ok(removed);
                }
                (whole_round, more) = (true, false);
            }
        };
        *self
            .inner
            .retention_cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = after;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed messages older than their chat's retention"
            );
        }
        swept
    }

    /// One visit of the sweep to `chat`: looks at up to `budget` messages
    /// after its watermark, removes the old user messages among them, and
    /// moves the watermark past what is done. A failure stops the
    /// watermark before the message it concerns (tried again next time)
    /// and is logged: one chat's trouble does not stop the others.
    async fn sweep_chat(&self, chat: &RetentionChat, now: Timestamp, budget: usize) -> Visit {
        let store = &self.inner.store;
        let chat_id = chat.chat_id;
        let keep_ms = i64::try_from(chat.seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let before = Timestamp::from_millis(now.as_millis().saturating_sub(keep_ms));
        let found = match store
            .expired_messages(chat_id, chat.swept_seq, before, budget)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(chat = %chat_id, error = %e, "retention sweep could not read a chat");
                return Visit::default();
            }
        };
        let doomed = |m: &&crate::store::ExpiredMessage| !m.deleted && !m.kind.is_engine_written();
        // Queued together: the lane batches them, and sends queued among
        // them go through in the same batches.
        let deletions = found.iter().filter(doomed).map(|m| {
            let change = Change::Delete {
                chat_id,
                message_id: m.id,
                at: now,
            };
            self.inner
                .writer
                .submit(change, Fanout::new(EventKind::Delete))
        });
        let mut outcomes = join_all(deletions).await.into_iter();
        let mut visit = Visit {
            looked: found.len(),
            ..Visit::default()
        };
        let mut watermark = chat.swept_seq;
        for m in &found {
            if doomed(&m) {
                match outcomes.next() {
                    Some(Ok(Applied::Updated { changed, .. })) => {
                        visit.removed += usize::from(changed);
                        if let Some(media) = m.media {
                            self.remove_media_of(media).await;
                        }
                    }
                    Some(Ok(_)) | None => break,
                    Some(Err(e)) => {
                        tracing::warn!(
                            chat = %chat_id, message = %m.id, error = %e,
                            "retention sweep could not remove a message"
                        );
                        break;
                    }
                }
            }
            watermark = m.seq;
        }
        if watermark > chat.swept_seq {
            if let Err(e) = store.set_retention_watermark(chat_id, watermark).await {
                tracing::warn!(chat = %chat_id, error = %e, "retention sweep could not move on");
            }
        }
        visit
    }
}

/// What one visit of the sweep to a chat did.
#[derive(Debug, Default)]
struct Visit {
    /// Messages looked at.
    looked: usize,
    /// Messages it made tombstones.
    removed: usize,
}
