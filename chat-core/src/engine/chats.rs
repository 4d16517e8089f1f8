//! Reading and opening chats: lookup, the chat list, a participant's own
//! settings of a chat, and creating direct chats and groups.

use std::{collections::HashSet, sync::Arc};

use serde::{Deserialize, Serialize};

use super::{
    Actor, ChatEngine,
    cache::Cached,
    validate::{MAX_DESCRIPTION, group_name, optional_text, optional_url},
};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    event::ServerEvent,
    model::{
        Chat, ChatId, ChatKind, ChatView, Encryption, ParticipantSettings, Role, Timestamp, UserId,
    },
    store::{ChatListQuery, GroupPatch, NewChat},
};

/// What [`ChatEngine::update_chat`] changes; fields left out stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatUpdate {
    /// The actor's own mute: `Some(Some(t))` mutes until `t`, `Some(None)`
    /// unmutes.
    pub muted_until: Option<Option<Timestamp>>,
    /// The group's fields (admins only).
    pub group: GroupPatch,
    /// The chat's retention, as [`set_retention`](ChatEngine::set_retention)
    /// sets it: `Some(None)` keeps messages forever.
    pub retention_secs: Option<Option<u64>>,
}

/// A group to create (`create_group`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGroup {
    /// Its name, 1..=100 characters.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// Its avatar (http or https URL).
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Members besides the creator (who becomes admin); may be empty.
    pub member_ids: Vec<UserId>,
    /// Encryption mode, fixed at creation.
    #[serde(default)]
    pub encryption: Encryption,
}

/// A created or found chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Opened {
    /// The chat as the actor sees it.
    pub chat: ChatView,
    /// Whether it was created now (`false`: it existed).
    pub created: bool,
}

/// One page of the chat list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatPage {
    /// Most recent activity first.
    pub chats: Vec<ChatView>,
    /// Where the next page starts, if there may be one.
    pub next: Option<(Timestamp, ChatId)>,
}

const HISTORY_MAX: usize = 200;

impl ChatEngine {
    // --- reading chats ---------------------------------------------------

    /// A chat the actor takes part in; anything else is `NotFound`.
    pub(super) async fn chat_of(&self, actor: &Actor, chat_id: ChatId) -> Result<Chat> {
        match self.inner.store.get_chat(chat_id).await? {
            Some(chat) if chat.participant(&actor.user_id).is_some() => Ok(chat),
            _ => Err(Error::not_found("chat not found")),
        }
    }

    /// The chat, if the actor is a participant, from the cache when it is
    /// there; with whether one side of a direct chat blocks the other.
    pub(super) async fn cached_chat(&self, actor: &Actor, chat_id: ChatId) -> Result<Arc<Cached>> {
        let cache = &self.inner.chats;
        let epoch = match cache.get(chat_id) {
            Ok(cached) if cached.chat.participant(&actor.user_id).is_some() => return Ok(cached),
            // Not a member as far as the cache knows: the store decides.
            Ok(_) => cache.epoch(),
            Err(epoch) => epoch,
        };
        let chat = self.chat_of(actor, chat_id).await?;
        let blocked = match (chat.kind, &chat.participants[..]) {
            (ChatKind::Direct, [a, b]) => {
                self.inner
                    .store
                    .is_blocked_either(&a.user_id, &b.user_id)
                    .await?
            }
            _ => false,
        };
        let cached = Arc::new(Cached::new(chat, blocked));
        cache.fill(cached.clone(), epoch);
        Ok(cached)
    }

    pub(super) async fn view(&self, chat: Chat, user: &UserId) -> Result<ChatView> {
        let private = private_readers(&*self.inner.store, std::slice::from_ref(&chat)).await?;
        self.view_masked(chat, user, &private).await
    }

    /// [`view`](Self::view), with the private readers known (looked up
    /// once for a whole page of chats).
    pub(super) async fn view_masked(
        &self,
        mut chat: Chat,
        user: &UserId,
        private: &std::collections::HashSet<UserId>,
    ) -> Result<ChatView> {
        let read = chat.participant(user).map_or(chat.last_seq, |p| p.read_seq);
        mask_reads(&mut chat, Some(user), private);
        let unread_count = if read >= chat.last_seq {
            0
        } else {
            self.inner.store.unread_count(chat.id, user, read).await?
        };
        let muted_until = chat.participant(user).and_then(|p| p.settings.muted_until);
        Ok(ChatView {
            chat,
            unread_count,
            muted_until,
        })
    }

    /// A chat as the actor sees it.
    pub async fn get_chat(&self, actor: &Actor, chat_id: ChatId) -> Result<ChatView> {
        let chat = self.chat_of(actor, chat_id).await?;
        self.view(chat, &actor.user_id).await
    }

    /// The actor's chats, most recent activity first, without the ones
    /// they hid (until those have new activity); `next` continues the list.
    pub async fn list_chats(&self, actor: &Actor, query: ChatListQuery) -> Result<ChatPage> {
        let limit = query.limit.clamp(1, HISTORY_MAX);
        let me = &actor.user_id;
        let mut out = Vec::with_capacity(limit);
        let mut after = query.after;
        loop {
            let batch = self
                .inner
                .store
                .list_chats(me, ChatListQuery { after, limit })
                .await?;
            let exhausted = batch.len() < limit;
            let private = private_readers(&*self.inner.store, &batch).await?;
            for chat in batch {
                after = Some((chat.last_activity, chat.id));
                let hidden = chat
                    .participant(me)
                    .and_then(|p| p.settings.hidden_seq)
                    .is_some_and(|h| chat.last_seq <= h);
                if !hidden {
                    out.push(self.view_masked(chat, me, &private).await?);
                    if out.len() == limit {
                        return Ok(ChatPage {
                            chats: out,
                            next: after,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(ChatPage {
                    chats: out,
                    next: None,
                });
            }
        }
    }

    /// Mutes push notifications of a chat for the actor until `until`
    /// (`None` unmutes).
    pub async fn set_muted(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        until: Option<Timestamp>,
    ) -> Result<ChatView> {
        let mut chat = self.chat_of(actor, chat_id).await?;
        let me = &actor.user_id;
        let mut settings = chat.participant(me).map(|p| p.settings).unwrap_or_default();
        settings.muted_until = until;
        self.save_settings(chat_id, me, settings).await?;
        if let Some(p) = chat.participants.iter_mut().find(|p| &p.user_id == me) {
            p.settings = settings;
        }
        self.view(chat, me).await
    }

    /// Updates a chat for the actor in one call: their own mute
    /// (`muted_until`: `Some(None)` unmutes) and, for group admins, the
    /// group's fields.
    ///
    /// Everything is checked before anything is written, so a refused
    /// update (not an admin, a name too long) changes nothing, the mute
    /// included. The group's fields are then committed first (the store
    /// re-checks the actor's role then), and the mute after them: only an
    /// internal error between the two writes can leave the group updated
    /// and the mute not, and the same request can simply be repeated.
    pub async fn update_chat(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        update: ChatUpdate,
    ) -> Result<ChatView> {
        let chat = self.chat_of(actor, chat_id).await?;
        let group = if update.group.is_empty() {
            None
        } else {
            Some(Self::checked_group_patch(&chat, actor, update.group)?)
        };
        let retention = match update.retention_secs {
            Some(seconds) => Some((self.retention_change(&chat, actor, seconds)?, seconds)),
            None => None,
        };
        let mut view = None;
        if let Some(patch) = group {
            view = Some(self.apply_group_patch(actor, chat_id, patch).await?);
        }
        if let Some((change, seconds)) = retention {
            view = Some(self.apply_retention(actor, &chat, change, seconds).await?);
        }
        if let Some(until) = update.muted_until {
            view = Some(self.set_muted(actor, chat_id, until).await?);
        }
        match view {
            Some(view) => Ok(view),
            None => self.view(chat, &actor.user_id).await,
        }
    }

    /// Leaves a chat: a group is left (as `remove_participant` of oneself,
    /// with its system message and the heir rule); a direct chat, which
    /// cannot be left, is hidden from the actor's chat list until it has
    /// new activity.
    pub async fn leave(&self, actor: &Actor, chat_id: ChatId) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        match chat.kind {
            ChatKind::Group => {
                self.remove_participant(actor, chat_id, &actor.user_id)
                    .await
            }
            ChatKind::Direct => self.hide_chat(actor, chat_id).await,
        }
    }

    /// Hides a chat from the actor's chat list until it has new activity.
    /// Membership and history stay.
    pub async fn hide_chat(&self, actor: &Actor, chat_id: ChatId) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        let me = &actor.user_id;
        let mut settings = chat.participant(me).map(|p| p.settings).unwrap_or_default();
        settings.hidden_seq = Some(chat.last_seq);
        self.save_settings(chat_id, me, settings).await
    }

    /// Stores a participant's own settings of a chat and forgets the cached
    /// chat, whose mute list sends use.
    async fn save_settings(
        &self,
        chat_id: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> Result<()> {
        self.inner
            .store
            .set_participant_settings(chat_id, user, settings)
            .await?;
        self.inner.chats.invalidate(chat_id);
        Ok(())
    }

    // --- creating chats --------------------------------------------------

    /// Opens the direct chat of the actor and `other`: the existing one, or
    /// a new one if the contact policy and blocks allow it.
    pub async fn create_direct(
        &self,
        actor: &Actor,
        other: &UserId,
        encryption: Encryption,
    ) -> Result<Opened> {
        let me = &actor.user_id;
        if me == other {
            return Err(Error::invalid("a direct chat needs another user"));
        }
        let store = &self.inner.store;
        if let Some(chat) = store.find_direct_chat(me, other).await? {
            return Ok(Opened {
                chat: self.view(chat, me).await?,
                created: false,
            });
        }
        if !self.inner.policy.may_open_direct(me, other).await? {
            return Err(Error::forbidden("you may not open a chat with this user"));
        }
        if store.is_blocked_either(me, other).await? {
            return Err(Error::forbidden("you may not open a chat with this user"));
        }
        let (chat, created) = store
            .create_chat(NewChat {
                id: ChatId::new(),
                kind: ChatKind::Direct,
                name: None,
                description: None,
                avatar_url: None,
                encryption,
                participants: vec![(me.clone(), Role::Member), (other.clone(), Role::Member)],
                created_at: self.now(),
            })
            .await?;
        if created {
            self.announce_chat(&chat).await;
        }
        Ok(Opened {
            chat: self.view(chat, me).await?,
            created,
        })
    }

    /// Creates a group; the creator becomes its admin, the others members.
    pub async fn create_group(&self, actor: &Actor, group: NewGroup) -> Result<ChatView> {
        let me = &actor.user_id;
        let name = group_name(&group.name)?;
        let description =
            optional_text("description", group.description.as_deref(), MAX_DESCRIPTION)?;
        let avatar_url = optional_url(group.avatar_url.as_deref())?;
        let max = self.inner.config.max_group_members;
        // Refused before any work on the list: a client controls its length.
        if group.member_ids.len() >= max.saturating_mul(2) {
            return Err(Error::invalid(format!("a group has at most {max} members")));
        }
        let mut seen = HashSet::with_capacity(group.member_ids.len() + 1);
        seen.insert(me.clone());
        let mut members: Vec<(UserId, Role)> = vec![(me.clone(), Role::Admin)];
        for m in group.member_ids {
            if seen.insert(m.clone()) {
                members.push((m, Role::Member));
            }
        }
        if members.len() > max {
            return Err(Error::invalid(format!("a group has at most {max} members")));
        }
        for (m, _) in &members {
            self.room_for_group(m).await?;
        }
        for (m, _) in &members[1..] {
            self.may_add(me, m).await?;
        }
        let (chat, _) = self
            .inner
            .store
            .create_chat(NewChat {
                id: ChatId::new(),
                kind: ChatKind::Group,
                name: Some(name),
                description,
                avatar_url,
                encryption: group.encryption,
                participants: members,
                created_at: self.now(),
            })
            .await?;
        self.announce_chat(&chat).await;
        self.view(chat, me).await
    }

    async fn announce_chat(&self, chat: &Chat) {
        // A new chat: every watermark is 0, nothing to hide.
        let frame = ServerEvent::ChatCreated(ChatView {
            chat: chat.clone(),
            unread_count: 0,
            muted_until: None,
        })
        .encode();
        self.publish(Audience::users(chat.member_ids()), Action::Event(frame))
            .await;
    }
}

/// The participants of `chats` who keep their reads to themselves
/// (`read_receipts: false`), in one store read.
pub(super) async fn private_readers(
    store: &dyn crate::store::Store,
    chats: &[Chat],
) -> Result<std::collections::HashSet<UserId>> {
    let ids: Vec<UserId> = chats
        .iter()
        .flat_map(|c| c.participants.iter().map(|p| p.user_id.clone()))
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect();
    let records = store.get_users(&ids).await?;
    Ok(ids
        .into_iter()
        .zip(records)
        .filter(|(_, r)| r.as_ref().is_some_and(|r| !r.privacy.read_receipts))
        .map(|(id, _)| id)
        .collect())
}

/// Hides the read watermark (`read_seq` 0) of every participant in
/// `private` but `viewer`: with read receipts off, what one has read is
/// nobody else's business, in events and in chat views alike.
pub(super) fn mask_reads(
    chat: &mut Chat,
    viewer: Option<&UserId>,
    private: &std::collections::HashSet<UserId>,
) {
    for p in &mut chat.participants {
        if Some(&p.user_id) != viewer && private.contains(&p.user_id) {
            p.read_seq = 0;
        }
    }
}
