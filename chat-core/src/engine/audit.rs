//! The moderation audit log: every action of an admin or moderator on
//! someone else (who, what, target, chat, when, note), appended after the
//! action, and read by service admins.
//!
//! # When an append fails
//!
//! An entry is appended *after* its action committed, never before: an
//! entry for an action that then failed would be a false record, and
//! appending first and undoing the entry on failure is impossible in an
//! append-only log. So the action stands even if its entry cannot be
//! written (the store failed between the two writes); that is not silent:
//! the entry is logged at error level with every field, so it can be
//! restored from the logs, and counted in
//! [`AUDIT_FAILURES`](crate::metrics::AUDIT_FAILURES) for an alert.

use std::fmt::Display;

use serde::Serialize;

use super::{Actor, ChatEngine};
use crate::{
    error::{Error, Result},
    metrics as m,
    model::{AuditAction, AuditEntry, AuditId, AuditTarget, ChatId, MessageId},
    store::AuditQuery,
};

/// Most entries in one page of [`ChatEngine::audit_log`]; the default is
/// [`AuditQuery::default`]'s 50.
pub const MAX_AUDIT_PAGE: usize = 200;

/// A page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPage {
    /// The entries, newest first.
    pub entries: Vec<AuditEntry>,
    /// The `before` of the next page: the last entry's id when the page is
    /// full, `None` when there is nothing more.
    pub next_cursor: Option<AuditId>,
}

impl ChatEngine {
    /// Records that `actor` did `action` to `target_id` (a `target`), in
    /// `chat`, with `note`. Called once the action has committed; a failure
    /// is logged and counted, not returned (see the module docs).
    pub(super) async fn audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        target: AuditTarget,
        target_id: impl Display,
        chat: Option<ChatId>,
        note: Option<String>,
    ) {
        let entry = AuditEntry {
            id: AuditId::new(),
            at: self.now(),
            actor_id: actor.user_id.clone(),
            action,
            target_type: target,
            target_id: target_id.to_string(),
            chat_id: chat,
            note,
        };
        if let Err(error) = self.inner.store.append_audit(entry.clone()).await {
            metrics::counter!(m::AUDIT_FAILURES).increment(1);
            tracing::error!(
                %error,
                id = %entry.id,
                at = %entry.at,
                actor = %entry.actor_id,
                action = entry.action.as_str(),
                target_type = entry.target_type.as_str(),
                target_id = %entry.target_id,
                chat = ?entry.chat_id,
                note = ?entry.note,
                "the action was done but its audit entry was not stored"
            );
        }
    }

    /// Records that `actor` deleted someone else's message.
    pub(super) async fn audit_deletion(
        &self,
        actor: &Actor,
        chat: ChatId,
        message: MessageId,
        note: Option<String>,
    ) {
        let (action, target) = (AuditAction::DeleteMessage, AuditTarget::Message);
        self.audit(actor, action, target, message, Some(chat), note)
            .await;
    }

    /// A page of the audit log (service admins): entries matching `query`,
    /// newest first. `query.limit` must be 1..=[`MAX_AUDIT_PAGE`].
    pub async fn audit_log(&self, actor: &Actor, query: AuditQuery) -> Result<AuditPage> {
        Self::require_admin(actor)?;
        let limit = query.limit;
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(Error::invalid(format!(
                "limit must be 1..={MAX_AUDIT_PAGE}, got {limit}"
            )));
        }
        let entries = self.inner.store.list_audit(query).await?;
        let next_cursor = match entries.last() {
            Some(last) if entries.len() == limit => Some(last.id),
            _ => None,
        };
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests;
