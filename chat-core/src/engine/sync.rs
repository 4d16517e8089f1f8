//! `sync`: the changes a user's devices missed, one page of chats at a time.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{Actor, ChatEngine};
use crate::{
    error::{Error, Result},
    model::{Chat, ChatId, ChatView, Message, Timestamp},
    store::ChatListQuery,
};

/// One chat in a `sync` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncChat {
    /// The chat now.
    pub chat: ChatView,
    /// Messages with `updated_seq` above the cursor, ascending.
    pub changes: Vec<Message>,
    /// Whether more changes follow (sync again from the last `updated_seq`).
    pub has_more: bool,
}

/// The answer to `sync`: one page of the user's chats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncResult {
    /// The chats of this page, with their changes.
    pub chats: Vec<SyncChat>,
    /// Chats the client had cursors for that the user is no longer in
    /// (on the first page).
    pub removed_chat_ids: Vec<ChatId>,
    /// Where the next page starts (`sync` again with `after: next`);
    /// `null` on the last page.
    pub next: Option<String>,
}

/// Parses the `next` of a sync page: `<last_activity millis>.<chat id>`.
fn parse_sync_cursor(text: &str) -> Result<(Timestamp, ChatId)> {
    let bad = || Error::invalid("after must be the next of an earlier sync page");
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    let at = at.parse::<i64>().map_err(|_| bad())?;
    let id = id.parse::<ChatId>().map_err(|_| bad())?;
    Ok((Timestamp::from_millis(at), id))
}

/// About how many bytes a chat and its changes take in a sync answer, to
/// bound a page without encoding it twice.
fn approx_size(chat: &Chat, changes: &[Message]) -> usize {
    let participants = chat.participants.len() * 160;
    let messages: usize = changes
        .iter()
        .map(|m| 300 + m.content.as_ref().map_or(0, String::len))
        .sum();
    400 + participants + messages
}

impl ChatEngine {
    /// Every change the actor's devices missed: for each of the actor's
    /// chats, the messages with `updated_seq` above the client's cursor (all
    /// of them for chats the client has no cursor for), in pages. The
    /// first page of [`sync_from`](Self::sync_from).
    pub async fn sync(&self, actor: &Actor, cursors: &HashMap<ChatId, u64>) -> Result<SyncResult> {
        self.sync_from(actor, cursors, None).await
    }

    /// One page of `sync`: the chats after `after` (the `next` of the page
    /// before; `None` for the first), most recent activity first, as many
    /// as fit in [`EngineConfig::sync_chats_page`] chats and about
    /// [`EngineConfig::sync_page_bytes`] bytes (at least one chat), each
    /// with at most [`EngineConfig::sync_page`] changes. `next` is set
    /// while more chats follow. `removed_chat_ids` comes with the first
    /// page. A chat whose activity moves it ahead of the cursor between
    /// pages is not missed: the connection receives its new events live,
    /// and the next sync from the start brings it.
    ///
    /// [`EngineConfig::sync_chats_page`]: super::EngineConfig::sync_chats_page
    /// [`EngineConfig::sync_page_bytes`]: super::EngineConfig::sync_page_bytes
    /// [`EngineConfig::sync_page`]: super::EngineConfig::sync_page
    pub async fn sync_from(
        &self,
        actor: &Actor,
        cursors: &HashMap<ChatId, u64>,
        after: Option<&str>,
    ) -> Result<SyncResult> {
        let config = &self.inner.config;
        let max = config.max_sync_cursors;
        if cursors.len() > max {
            return Err(Error::invalid(format!("at most {max} cursors per sync")));
        }
        let after = after.map(parse_sync_cursor).transpose()?;
        let removed_chat_ids = match after {
            None if !cursors.is_empty() => self.removed_chats(actor, cursors).await?,
            _ => Vec::new(),
        };
        let me = &actor.user_id;
        let (page_chats, page_bytes) = (config.sync_chats_page.max(1), config.sync_page_bytes);
        let batch = self
            .inner
            .store
            .list_chats(
                me,
                ChatListQuery {
                    after,
                    limit: page_chats + 1,
                },
            )
            .await?;
        let fetched = batch.len().min(page_chats);
        let more = batch.len() > page_chats;
        let mut out = Vec::with_capacity(fetched);
        let mut bytes = 0usize;
        let mut last = None;
        let private = super::chats::private_readers(&*self.inner.store, &batch).await?;
        for chat in batch.into_iter().take(page_chats) {
            if !out.is_empty() && bytes >= page_bytes {
                break;
            }
            last = Some((chat.last_activity, chat.id));
            let cursor = cursors.get(&chat.id).copied().unwrap_or(0);
            let from_seq = chat.participant(me).map_or(0, |p| p.visible_from_seq);
            let (changes, has_more) = if cursor >= chat.last_seq {
                (Vec::new(), false)
            } else {
                let mut changes = self
                    .inner
                    .store
                    .changes(chat.id, cursor, from_seq, config.sync_page + 1)
                    .await?;
                let has_more = changes.len() > config.sync_page;
                changes.truncate(config.sync_page);
                (changes, has_more)
            };
            bytes += approx_size(&chat, &changes);
            out.push(SyncChat {
                chat: self.view_masked(chat, me, &private).await?,
                changes,
                has_more,
            });
        }
        let next = if more || out.len() < fetched {
            last.map(|(at, id)| format!("{}.{id}", at.as_millis()))
        } else {
            None
        };
        Ok(SyncResult {
            chats: out,
            removed_chat_ids,
            next,
        })
    }

    /// The chats of `cursors` the actor no longer takes part in.
    async fn removed_chats(
        &self,
        actor: &Actor,
        cursors: &HashMap<ChatId, u64>,
    ) -> Result<Vec<ChatId>> {
        let mut seen = HashSet::with_capacity(cursors.len());
        let mut after = None;
        loop {
            let batch = self
                .inner
                .store
                .list_chats(&actor.user_id, ChatListQuery { after, limit: 500 })
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some((last.last_activity, last.id));
            let done = batch.len() < 500;
            seen.extend(batch.into_iter().map(|c| c.id));
            if done {
                break;
            }
        }
        let mut removed: Vec<ChatId> = cursors
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        removed.sort();
        Ok(removed)
    }
}
