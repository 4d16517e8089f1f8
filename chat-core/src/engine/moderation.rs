//! Safety and moderation: blocks, reports, privacy settings, and what
//! service admins do (suspensions, the report queue, deletions).

use serde::{Deserialize, Serialize};

use super::{
    Actor, ChatEngine,
    validate::{MAX_REASON, optional_text},
    writer::{EventKind, Fanout},
};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    model::{
        AuditAction, AuditTarget, Message, MessageId, Privacy, Report, ReportId, ReportStatus,
        Timestamp, UserId,
    },
    store::{Change, ReportQuery, ReportResolution},
    transport::CLOSE_SUSPENDED,
};

/// Changes of [`ChatEngine::set_privacy`]; absent fields stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyPatch {
    /// Send read receipts to others.
    #[serde(default)]
    pub read_receipts: Option<bool>,
    /// Send typing to others.
    #[serde(default)]
    pub typing: Option<bool>,
    /// Send presence to others.
    #[serde(default)]
    pub presence: Option<bool>,
    /// Share mood check-in answers with the host app (off by default).
    #[serde(default)]
    pub mood_sharing: Option<bool>,
}

impl ChatEngine {
    // --- safety ----------------------------------------------------------

    /// Blocks `other` for the actor: no direct chat with them, no signal of
    /// theirs in it, no presence either way.
    pub async fn block(&self, actor: &Actor, other: &UserId) -> Result<()> {
        self.set_block(actor, other, true).await
    }

    /// Lifts the actor's block of `other`.
    pub async fn unblock(&self, actor: &Actor, other: &UserId) -> Result<()> {
        self.set_block(actor, other, false).await
    }

    async fn set_block(&self, actor: &Actor, other: &UserId, on: bool) -> Result<()> {
        if other == &actor.user_id {
            return Err(Error::invalid("you cannot block yourself"));
        }
        self.inner
            .store
            .set_block(&actor.user_id, other, on)
            .await?;
        // Which direct chat of the two is cached is not worth a lookup:
        // blocks are rare.
        self.inner.chats.clear();
        Ok(())
    }

    /// The users the actor has blocked.
    pub async fn blocked_users(&self, actor: &Actor) -> Result<Vec<UserId>> {
        self.inner.store.blocked_by_user(&actor.user_id).await
    }

    /// Reports a message the actor can see; reporting the same message again
    /// returns the open report.
    pub async fn report(
        &self,
        actor: &Actor,
        message_id: MessageId,
        reason: &str,
    ) -> Result<ReportId> {
        let reason = optional_text("reason", Some(reason), MAX_REASON)?
            .ok_or_else(|| Error::invalid("reason is required"))?;
        let (_, message) = self.message_of(actor, message_id).await?;
        let report = Report::open(actor.user_id.clone(), &message, reason, self.now());
        Ok(self.inner.store.insert_report(report).await?.id)
    }

    /// Changes what the actor lets others see; returns the settings now.
    pub async fn set_privacy(&self, actor: &Actor, patch: PrivacyPatch) -> Result<Privacy> {
        let mut privacy = self.privacy_of(&actor.user_id).await?;
        if let Some(v) = patch.read_receipts {
            privacy.read_receipts = v;
        }
        if let Some(v) = patch.typing {
            privacy.typing = v;
        }
        if let Some(v) = patch.presence {
            privacy.presence = v;
        }
        if let Some(v) = patch.mood_sharing {
            privacy.mood_sharing = v;
        }
        self.inner
            .store
            .set_privacy(&actor.user_id, privacy)
            .await?;
        Ok(privacy)
    }

    pub(super) async fn privacy_of(&self, user: &UserId) -> Result<Privacy> {
        Ok(self
            .inner
            .store
            .get_user(user)
            .await?
            .map(|r| r.privacy)
            .unwrap_or_default())
    }

    // --- moderation (service admins) -------------------------------------

    pub(super) fn require_admin(actor: &Actor) -> Result<()> {
        if actor.admin {
            Ok(())
        } else {
            Err(Error::forbidden("admins only"))
        }
    }

    /// Suspends `user` until `until` (forever if `None`) and closes their
    /// live connections on every node.
    pub async fn suspend(
        &self,
        actor: &Actor,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> Result<()> {
        Self::require_admin(actor)?;
        self.suspend_user(actor, user, until, None).await
    }

    /// [`suspend`](Self::suspend) of an admin, audited with the report that
    /// led to it (`via`), if any.
    async fn suspend_user(
        &self,
        actor: &Actor,
        user: &UserId,
        until: Option<Timestamp>,
        via: Option<ReportId>,
    ) -> Result<()> {
        let until = until.unwrap_or(Timestamp::FOREVER);
        self.inner.store.set_suspension(user, Some(until)).await?;
        let action = Action::Disconnect {
            code: CLOSE_SUSPENDED,
            reason: "account suspended".to_owned(),
        };
        self.publish(Audience::users(vec![user.clone()]), action)
            .await;
        let note = match via {
            Some(report) => format!("report {report}, until {until}"),
            None => format!("until {until}"),
        };
        self.audit(
            actor,
            AuditAction::SuspendUser,
            AuditTarget::User,
            user,
            None,
            Some(note),
        )
        .await;
        Ok(())
    }

    /// Lifts a suspension.
    pub async fn unsuspend(&self, actor: &Actor, user: &UserId) -> Result<()> {
        Self::require_admin(actor)?;
        self.inner.store.set_suspension(user, None).await?;
        self.audit(
            actor,
            AuditAction::UnsuspendUser,
            AuditTarget::User,
            user,
            None,
            None,
        )
        .await;
        Ok(())
    }

    /// Reports in the moderation queue that match `query` (service admins
    /// only), oldest first; `limit` 1..=500.
    pub async fn list_reports(&self, actor: &Actor, query: ReportQuery) -> Result<Vec<Report>> {
        Self::require_admin(actor)?;
        if !(1..=500).contains(&query.limit) {
            return Err(Error::invalid("limit must be 1..=500"));
        }
        self.inner.store.list_reports(query).await
    }

    /// Closes a report: dismisses it, or deletes the reported message, or
    /// suspends its sender (forever, or until `until`), and records who
    /// decided and why. The audit log gets a `resolve_report` entry with
    /// the note, and one `delete_message` or `suspend_user` entry naming
    /// the report for what the resolution did.
    pub async fn resolve_report(
        &self,
        actor: &Actor,
        id: ReportId,
        action: ModerationAction,
        note: Option<String>,
    ) -> Result<Report> {
        Self::require_admin(actor)?;
        let note = optional_text("note", note.as_deref(), MAX_REASON)?;
        let report = self
            .inner
            .store
            .get_report(id)
            .await?
            .ok_or_else(|| Error::not_found("report not found"))?;
        if report.status != ReportStatus::Open {
            return Err(Error::conflict("the report is closed already"));
        }
        let status = match action {
            ModerationAction::Dismiss => ReportStatus::Dismissed,
            ModerationAction::DeleteMessage => {
                self.delete_as_admin(actor, report.message_id, Some(id))
                    .await?;
                ReportStatus::Resolved
            }
            ModerationAction::SuspendUser { until } => {
                self.suspend_user(actor, &report.reported_user_id, until, Some(id))
                    .await?;
                ReportStatus::Resolved
            }
        };
        tracing::info!(admin = %actor.user_id, report = %id, ?action, "report resolved");
        let resolved = self
            .inner
            .store
            .resolve_report(ReportResolution {
                id,
                status,
                by: actor.user_id.clone(),
                note: note.clone(),
                at: self.now(),
            })
            .await?;
        self.audit(
            actor,
            AuditAction::ResolveReport,
            AuditTarget::Report,
            id,
            Some(report.chat_id),
            note,
        )
        .await;
        // A legal hold ends: the store dropped the snapshot, and the
        // pseudonym's key goes once no open report needs it.
        self.end_hold(&report).await;
        // The hold ends: media of a message deleted while this report was
        // open goes now, unless another open report still holds it.
        if let Some(media) = &report.media {
            let gone = match self.inner.store.get_message(report.message_id).await {
                Ok(message) => message.is_none_or(|m| m.deleted),
                Err(e) => {
                    tracing::error!(report = %id, error = %e, "could not check a resolved report's message");
                    false
                }
            };
            if gone {
                self.remove_media_of(media.id).await;
            }
        }
        Ok(resolved)
    }

    /// Crypto-shredding (service admins): destroys `user`'s key in the key
    /// store of encryption at rest, so that everything they sent, in this
    /// store and in every copy of it (free pages, the WAL, dead tuples,
    /// backups), reads as [`Unreadable::Erased`](crate::model::Unreadable)
    /// from now on, on this node at once and on every other node within
    /// [`KeyringConfig::recheck_after`](crate::keystore::KeyringConfig).
    /// Their report snapshots go with it. Returns whether they had a key.
    ///
    /// The messages themselves, and the user's other data, stay: removing
    /// them is erasure's other half. If the user writes again, they get a
    /// new key.
    ///
    /// A [`Conflict`](Error::Conflict) on an engine without encryption at
    /// rest: it has no key to destroy, and saying "done" would mislead.
    pub async fn erase_user_keys(&self, actor: &Actor, user: &UserId) -> Result<bool> {
        Self::require_admin(actor)?;
        let existed = self.encrypted()?.keyring().erase_user(user).await?;
        tracing::info!(admin = %actor.user_id, user = %user, existed, "user key destroyed");
        Ok(existed)
    }

    /// Seals the content written before encryption at rest was turned on;
    /// see [`EncryptedStore::seal_existing`](crate::store::EncryptedStore::seal_existing)
    /// (resumable, safe while serving). For the embedder at start, not for
    /// clients: it takes no actor.
    ///
    /// A [`Conflict`](Error::Conflict) on an engine without encryption at
    /// rest.
    pub async fn seal_existing_content(
        &self,
        batch: usize,
        from_start: bool,
    ) -> Result<crate::store::SealedExisting> {
        self.encrypted()?.seal_existing(batch, from_start).await
    }

    fn encrypted(&self) -> Result<&crate::store::EncryptedStore> {
        self.inner.encrypted.as_deref().ok_or_else(|| {
            Error::conflict("this engine does not encrypt at rest: there are no keys")
        })
    }

    /// Deletes any message (service admins), leaving a tombstone.
    pub async fn moderator_delete(&self, actor: &Actor, message_id: MessageId) -> Result<Message> {
        Self::require_admin(actor)?;
        self.delete_as_admin(actor, message_id, None).await
    }

    /// [`moderator_delete`](Self::moderator_delete) of an admin, audited
    /// with the report that led to it (`via`), if any. A message deleted
    /// already is returned as it is, and nothing is audited.
    async fn delete_as_admin(
        &self,
        actor: &Actor,
        message_id: MessageId,
        via: Option<ReportId>,
    ) -> Result<Message> {
        let message = self
            .inner
            .store
            .get_message(message_id)
            .await?
            .ok_or_else(|| Error::not_found("message not found"))?;
        let chat = self
            .inner
            .store
            .get_chat(message.chat_id)
            .await?
            .ok_or_else(|| Error::not_found("message not found"))?;
        if message.deleted {
            return Ok(message);
        }
        let change = Change::Delete {
            chat_id: chat.id,
            message_id,
            at: self.now(),
        };
        let deleted = self.updated(change, Fanout::new(EventKind::Delete)).await?;
        if let Some(media) = &message.media {
            self.remove_media_of(media.id).await;
        }
        let note = via.map(|report| format!("report {report}"));
        self.audit_deletion(actor, chat.id, message_id, note).await;
        Ok(deleted)
    }
}

/// What an admin does about a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum ModerationAction {
    /// Nothing to do.
    Dismiss,
    /// Delete the reported message.
    DeleteMessage,
    /// Suspend the reported message's sender.
    SuspendUser {
        /// Until when; forever if absent.
        #[serde(default)]
        until: Option<Timestamp>,
    },
}
