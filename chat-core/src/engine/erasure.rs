//! Erasure (GDPR): removing a user from everything the engine holds, in
//! the store, the media store and the key store, irreversibly.
//!
//! The user is suspended first, so that their connections close and
//! nothing new of theirs arrives while the erasure runs; if it stops
//! half-way (a crash, a store error), they stay suspended and running it
//! again finishes it: every step skips what an earlier run did. Messages,
//! reactions and memberships are removed through the chats' write lanes,
//! as their deletion by the user would be, so that participants get
//! events and `sync` brings the tombstones to devices that were offline;
//! each page of them is queued at once, and the lanes take sends in
//! between. Then the user's key is destroyed (crypto-shredding: whatever
//! copy of their content is left anywhere, free pages, the WAL, backups,
//! stops opening), and the rows left are removed or pseudonymized in one
//! transaction, the user record last, after which the id is a new user.
//!
//! Evidence is the exception: snapshots of open reports about the user's
//! messages are sealed anew under a key of a pseudonym and kept until the
//! report is resolved (a legal hold); resolving the last of them destroys
//! that key too.

use futures::future::join_all;
use serde::Serialize;
use ulid::Ulid;

use super::{
    Actor, ChatEngine,
    writer::{EventKind, Fanout},
};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    model::{AuditAction, AuditTarget, ChatKind, MediaId, Report, ReportStatus, Timestamp, UserId},
    store::{Applied, Change, ChatListQuery, HeldSnapshot, ReportQuery},
    transport::CLOSE_SUSPENDED,
};

/// Messages, reactions, chats or uploads handled per page.
const PAGE: usize = 100;

/// What [`ChatEngine::erase_user`] did, as `DELETE /api/v1/users/me`
/// answers it (PROTOCOL.md 5.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Erasure {
    /// What was removed, per kind.
    pub removed: Removed,
    /// What is kept, and why.
    pub kept: Kept,
}

/// The removed part of an [`Erasure`], counted per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Removed {
    /// Messages the user sent, now tombstones.
    pub messages: u64,
    /// Uploads, bytes and thumbnails with them (those held as evidence
    /// not counted).
    pub media: u64,
    /// Reactions.
    pub reactions: u64,
    /// Chats the user was a participant of.
    pub memberships: u64,
    /// Users the user had blocked.
    pub blocks: u64,
    /// Keys destroyed: the user's key of encryption at rest, and their
    /// devices' pinned MLS signature keys.
    pub keys: u64,
    /// MLS key packages.
    pub key_packages: u64,
    /// Reports the user filed: their reason is removed and they name a
    /// pseudonym (the reports stay, for the users they protect).
    pub reports_filed: u64,
    /// Snapshots of closed reports about the user's messages.
    pub report_snapshots: u64,
    /// Audit entries that now name a pseudonym instead of the user.
    pub audit_entries: u64,
    /// Answers to check-ins.
    pub checkin_answers: u64,
}

/// The kept part of an [`Erasure`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Kept {
    /// Open reports about the user's messages whose snapshot is held
    /// until they are resolved.
    pub reports_on_hold: u64,
}

impl ChatEngine {
    /// Erases `user` (the actor themselves, or anyone for service admins):
    /// their messages become tombstones, their uploads, reactions,
    /// memberships, blocks, privacy settings, presence, key packages and
    /// device keys are removed, their key of encryption at rest is
    /// destroyed, reports they filed and audit entries that name them
    /// name a pseudonym, and snapshots of open reports about their
    /// messages are held until resolved. Irreversible; afterwards the id
    /// is a new, empty user. Erasing again finishes an erasure that
    /// stopped half-way, and otherwise removes nothing.
    ///
    /// `not_found` when an admin names a user the engine holds nothing
    /// of; `forbidden` when a user names someone else.
    pub async fn erase_user(&self, actor: &Actor, user: &UserId) -> Result<Erasure> {
        if *user != actor.user_id {
            Self::require_admin(actor)?;
            if !self.holds_anything_of(user).await? {
                return Err(Error::not_found("no such user"));
            }
        }
        let pseudonym = UserId::new(format!("erased-{}", Ulid::new().to_string().to_lowercase()))?;
        tracing::info!(actor = %actor.user_id, user = %user, %pseudonym, "erasing a user");
        let mut done = Erasure::default();

        // Nothing new of theirs while this runs; on every node.
        self.inner
            .store
            .set_suspension(user, Some(Timestamp::FOREVER))
            .await?;
        let close = Action::Disconnect {
            code: CLOSE_SUSPENDED,
            reason: "account erased".to_owned(),
        };
        self.publish(Audience::users(vec![user.clone()]), close)
            .await;

        // Evidence first, while the user's key still opens it.
        let held = self.hold_evidence(user, &pseudonym).await?;
        done.kept.reports_on_hold = held.held;
        done.removed.report_snapshots = held.destroyed;

        done.removed.messages = self.tombstone_messages(user).await?;
        done.removed.reactions = self.remove_reactions(user).await?;
        done.removed.memberships = self.remove_memberships(user).await?;
        done.removed.media = self.remove_uploads(user).await?;

        if let Some(encrypted) = self.inner.encrypted.as_deref() {
            done.removed.keys += u64::from(encrypted.keyring().erase_user(user).await?);
        }

        done.removed.audit_entries = self
            .inner
            .store
            .pseudonymize_audit(user, &pseudonym)
            .await?;
        // The erasure's own entry names the pseudonym from the start (and
        // as its actor too, when the user erased themselves).
        let by_self = actor.user_id == *user;
        let recorder = if by_self {
            Actor::user(pseudonym.clone())
        } else {
            actor.clone()
        };
        let note = (!by_self).then(|| "by an admin".to_owned());
        self.audit(
            &recorder,
            AuditAction::EraseUser,
            AuditTarget::User,
            &pseudonym,
            None,
            note,
        )
        .await;

        // Last: the user record goes (their suspension with it).
        let rows = self.inner.store.erase_user_rows(user, &pseudonym).await?;
        done.removed.reports_filed = rows.reports_filed;
        done.removed.blocks = rows.blocks;
        done.removed.key_packages = rows.key_packages;
        done.removed.keys += rows.device_keys;
        done.removed.reactions += rows.reactions;
        done.removed.memberships += rows.memberships;
        done.removed.checkin_answers = rows.checkin_answers;
        self.inner.chats.clear();
        // Copies of what was removed leave the store's log too (SQLite's
        // WAL); best effort, the content in them was shredded anyway.
        if let Err(e) = self.inner.store.checkpoint().await {
            tracing::warn!(error = %e, "could not checkpoint the store after an erasure");
        }
        tracing::info!(%pseudonym, ?done, "user erased");
        Ok(done)
    }

    /// Whether the store holds anything of `user`: a record, a
    /// membership, a message or an upload.
    async fn holds_anything_of(&self, user: &UserId) -> Result<bool> {
        let store = &self.inner.store;
        if store.get_user(user).await?.is_some() {
            return Ok(true);
        }
        let one = ChatListQuery {
            after: None,
            limit: 1,
        };
        if !store.list_chats(user, one).await?.is_empty() {
            return Ok(true);
        }
        if !store.messages_by_sender(user, None, 1).await?.is_empty() {
            return Ok(true);
        }
        Ok(!store.media_by_uploader(user, None, 1).await?.is_empty())
    }

    /// Puts the open reports about `user`'s messages on legal hold with
    /// their snapshots (sealed anew under `pseudonym`'s key by an
    /// encrypting store), and destroys the snapshots of closed ones.
    async fn hold_evidence(
        &self,
        user: &UserId,
        pseudonym: &UserId,
    ) -> Result<crate::store::HeldReports> {
        let store = &self.inner.store;
        let mut held = Vec::new();
        let mut query = ReportQuery::new(PAGE);
        query.reported_user = Some(user.clone());
        query.status = Some(ReportStatus::Open);
        loop {
            let page = store.list_reports(query.clone()).await?;
            query.after = page.last().map(|r| r.id);
            let full = page.len() == PAGE;
            held.extend(page.into_iter().map(|r| HeldSnapshot {
                id: r.id,
                chat_id: r.chat_id,
                message_id: r.message_id,
                content: r.content,
            }));
            if !full {
                break;
            }
        }
        store.hold_reports(user, pseudonym, held).await
    }

    /// Makes `user`'s standing messages tombstones, a page at a time;
    /// returns how many.
    async fn tombstone_messages(&self, user: &UserId) -> Result<u64> {
        let mut after: Option<String> = None;
        let mut removed = 0;
        loop {
            let page = self
                .inner
                .store
                .messages_by_sender(user, after.as_deref(), PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(removed);
            };
            after = Some(last.client_msg_id.clone());
            let now = self.now();
            let deletions = page.iter().map(|m| {
                let change = Change::Delete {
                    chat_id: m.chat_id,
                    message_id: m.id,
                    at: now,
                };
                self.inner
                    .writer
                    .submit(change, Fanout::new(EventKind::Delete))
            });
            for outcome in join_all(deletions).await {
                if let Applied::Updated { changed: true, .. } = outcome? {
                    removed += 1;
                }
            }
        }
    }

    /// Removes `user`'s reactions, a page at a time; returns how many.
    async fn remove_reactions(&self, user: &UserId) -> Result<u64> {
        let mut removed = 0;
        loop {
            let page = self.inner.store.reactions_by_user(user, PAGE).await?;
            if page.is_empty() {
                return Ok(removed);
            }
            let now = self.now();
            let removals = page.into_iter().map(|r| {
                let change = Change::React {
                    chat_id: r.chat_id,
                    message_id: r.message_id,
                    user_id: user.clone(),
                    emoji: r.emoji.clone(),
                    add: false,
                    max_distinct: self.inner.config.max_reactions_per_message,
                    at: now,
                };
                let kind = EventKind::React {
                    user_id: user.clone(),
                    emoji: r.emoji,
                    add: false,
                };
                self.inner.writer.submit(change, Fanout::new(kind))
            });
            let mut progress = 0;
            for outcome in join_all(removals).await {
                if let Applied::Updated { changed: true, .. } = outcome? {
                    progress += 1;
                }
            }
            removed += progress;
            if progress == 0 {
                // What is left goes with the user's rows.
                return Ok(removed);
            }
        }
    }

    /// Removes `user` from every chat, as a removal by themselves: a group
    /// whose last admin they were gets an heir, and a direct chat stays
    /// the other side's (a new one can be opened). In an e2ee chat their
    /// devices stay in the MLS group until a member commits their removal,
    /// which clients do on `participant_removed`.
    async fn remove_memberships(&self, user: &UserId) -> Result<u64> {
        let mut removed = 0;
        loop {
            let query = ChatListQuery {
                after: None,
                limit: PAGE,
            };
            let chats = self.inner.store.list_chats(user, query).await?;
            if chats.is_empty() {
                return Ok(removed);
            }
            let now = self.now();
            let removals = chats.iter().map(|chat| {
                let change = Change::RemoveParticipant {
                    chat_id: chat.id,
                    user_id: user.clone(),
                    by: user.clone(),
                    at: now,
                };
                let heir = (chat.kind == ChatKind::Group).then(|| Change::EnsureAdmin {
                    chat_id: chat.id,
                    by: user.clone(),
                    at: now,
                });
                self.inner
                    .writer
                    .submit_framed(change, Fanout::new(EventKind::Membership), heir)
            });
            let mut progress = 0;
            for outcome in join_all(removals).await {
                match outcome {
                    Ok(_) => progress += 1,
                    // Left meanwhile.
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            removed += progress;
            if progress == 0 {
                return Ok(removed);
            }
        }
    }

    /// Removes `user`'s uploads with their bytes, but those of a message
    /// an open report holds as evidence; returns how many it removed.
    async fn remove_uploads(&self, user: &UserId) -> Result<u64> {
        if self.inner.media.is_none() {
            return Ok(0);
        }
        let mut after: Option<MediaId> = None;
        let mut removed = 0;
        loop {
            let page = self
                .inner
                .store
                .media_by_uploader(user, after, PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(removed);
            };
            after = Some(last.id);
            for record in &page {
                if self.reported(record.message_id, true).await? {
                    continue;
                }
                self.remove_media(record).await?;
                removed += 1;
            }
        }
    }

    /// After `report` was resolved: if it was on legal hold and no other
    /// open report holds evidence under its pseudonym, that pseudonym's
    /// key goes, so that no copy of the snapshot opens any more.
    pub(super) async fn end_hold(&self, report: &Report) {
        let Some(encrypted) = self.inner.encrypted.as_deref() else {
            return;
        };
        if !report.legal_hold {
            return;
        }
        let mut query = ReportQuery::new(1);
        query.reported_user = Some(report.reported_user_id.clone());
        query.status = Some(ReportStatus::Open);
        let outcome = match self.inner.store.list_reports(query).await {
            Ok(open) if open.is_empty() => encrypted
                .keyring()
                .erase_user(&report.reported_user_id)
                .await
                .map(|_| ()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::error!(report = %report.id, error = %e, "could not end a legal hold's key");
        }
    }
}

#[cfg(test)]
mod tests;
