//! In-memory [`Store`]: the reference implementation, used by tests and by
//! single-process embedders that need no durability.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;

use crate::{
    error::{Error, Result},
    mls::{ClaimedKeyPackage, MAX_KEY_PACKAGES_PER_DEVICE, PublishedKeyPackage},
    model::{
        AuditEntry, AuditId, AuditTarget, Chat, ChatId, ChatKind, DeviceId, MediaId, MediaRecord,
        Message, MessageId, MessageType, Participant, ParticipantSettings, Privacy, Report,
        ReportId, ReportStatus, Timestamp, UserId, UserRecord,
    },
    store::{
        Applied, AuditQuery, Change, ChatListQuery, CheckinAnswer, Committed, DAY_MS, DayCounts,
        ErasedRows, ExpiredMessage, HeldReports, HeldSnapshot, HistoryQuery, Members,
        MlsGroupRecord, NewChat, NewMessage, RECEIPT_HORIZON_MS, ReportQuery, ReportResolution,
        RetentionChat, SentMessage, StatsRows, Store, StoredText, TextReplacement, TextTable,
        UserReaction, WeekCounts, check_authority, counted_kind, promotion_of_heir, receipt_range,
        rows::{self, Marked, direct_key},
        week_of_day,
    },
};

/// A [`Store`] that keeps everything in memory, behind one lock.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    chats: HashMap<ChatId, Chat>,
    /// Direct chats by [`direct_key`].
    direct: HashMap<String, ChatId>,
    /// Per chat: messages by seq.
    logs: HashMap<ChatId, BTreeMap<u64, Message>>,
    message_index: HashMap<MessageId, (ChatId, u64)>,
    client_ids: HashMap<(UserId, String), MessageId>,
    blocks: Vec<(UserId, UserId)>,
    users: HashMap<UserId, UserRecord>,
    reports: BTreeMap<ReportId, Report>,
    audit: BTreeMap<AuditId, AuditEntry>,
    media: HashMap<MediaId, MediaRecord>,
    meta: HashMap<String, String>,
    /// Per device, in user then device order: key packages oldest first,
    /// and the last-resort one.
    key_packages: BTreeMap<(UserId, DeviceId), DeviceKeyPackages>,
    mls_groups: HashMap<ChatId, MlsGroupRecord>,
    device_keys: HashMap<(UserId, DeviceId), Vec<u8>>,
    /// Each chat's members as its last change left them, shared by the
    /// results of the changes that follow until one changes them (a
    /// membership change, a participant's settings, a block).
    members: HashMap<ChatId, Arc<Members>>,
    /// Each chat's retention watermark ([`Store::set_retention_watermark`]).
    retention_swept: HashMap<ChatId, u64>,
    /// Check-in answers, in the order first given.
    answers: Vec<CheckinAnswer>,
    /// Receipt times by message: first delivered, first read.
    receipts: HashMap<(ChatId, u64), (Timestamp, Option<Timestamp>)>,
    /// Sessions opened, by day and user.
    sessions: BTreeMap<(i64, UserId), u64>,
}

#[derive(Debug, Default)]
struct DeviceKeyPackages {
    packages: std::collections::VecDeque<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change:
        // every change is validated before it mutates, so the state is
        // still consistent and we keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Records the receipt times of a mark that moved `user`'s watermarks
    /// from `was` to `marked` at `at`; returns when the messages it
    /// delivered first were created.
    fn time_receipts(
        &mut self,
        chat_id: ChatId,
        user: &UserId,
        (delivered_was, read_was): (u64, u64),
        marked: Marked,
        at: Timestamp,
    ) -> Vec<Timestamp> {
        let Some(log) = self.logs.get(&chat_id) else {
            return Vec::new();
        };
        let since = at.as_millis().saturating_sub(RECEIPT_HORIZON_MS);
        let timed = |(lo, hi): (u64, u64)| {
            log.range(lo + 1..=hi).filter(|(_, m)| {
                m.sender_id != *user && counted_kind(m.kind) && m.created_at.as_millis() >= since
            })
        };
        let mut first = Vec::new();
        if marked.delivered_moved {
            for (seq, m) in timed(receipt_range(delivered_was, marked.delivered_seq)) {
                if let std::collections::hash_map::Entry::Vacant(e) =
                    self.receipts.entry((chat_id, *seq))
                {
                    e.insert((at, None));
                    first.push(m.created_at);
                }
            }
        }
        if marked.read_moved {
            for (seq, _) in timed(receipt_range(read_was, marked.read_seq)) {
                if let Some((_, read)) = self.receipts.get_mut(&(chat_id, *seq)) {
                    read.get_or_insert(at);
                }
            }
        }
        first
    }

    fn message_mut(&mut self, chat_id: ChatId, id: MessageId) -> Result<&mut Message> {
        let (c, seq) = *self
            .message_index
            .get(&id)
            .ok_or_else(|| Error::not_found("message not found"))?;
        if c != chat_id {
            return Err(Error::not_found("message not found"));
        }
        self.logs
            .get_mut(&c)
            .and_then(|log| log.get_mut(&seq))
            .ok_or_else(|| Error::not_found("message not found"))
    }

    fn next_seq(&mut self, chat_id: ChatId, at: Timestamp) -> Result<u64> {
        let chat = self
            .chats
            .get_mut(&chat_id)
            .ok_or_else(|| Error::not_found("chat not found"))?;
        chat.last_seq += 1;
        chat.last_activity = at;
        Ok(chat.last_seq)
    }

    fn chat(&self, chat_id: ChatId) -> Result<&Chat> {
        self.chats
            .get(&chat_id)
            .ok_or_else(|| Error::not_found("chat not found"))
    }

    fn insert_message(&mut self, message: Message) {
        if let Some(cid) = &message.client_msg_id {
            self.client_ids
                .insert((message.sender_id.clone(), cid.clone()), message.id);
        }
        self.message_index
            .insert(message.id, (message.chat_id, message.seq));
        self.logs
            .entry(message.chat_id)
            .or_default()
            .insert(message.seq, message);
    }

    fn system_message(&mut self, change: &Change, by: &UserId, at: Timestamp) -> Result<Message> {
        let chat_id = change.chat_id();
        let seq = self.next_seq(chat_id, at)?;
        let message =
            NewMessage::system(chat_id, by.clone(), change.system_event(), at).into_message(seq);
        self.insert_message(message.clone());
        Ok(message)
    }

    /// The chat's members now (see "Audience at commit" in [`Store`]).
    fn members(&mut self, chat_id: ChatId) -> Result<Arc<Members>> {
        if let Some(m) = self.members.get(&chat_id) {
            return Ok(m.clone());
        }
        let chat = self.chat(chat_id)?;
        let blocked = match &chat.participants[..] {
            [a, b] if chat.kind == ChatKind::Direct => self.blocks.iter().any(|(x, y)| {
                (x == &a.user_id && y == &b.user_id) || (x == &b.user_id && y == &a.user_id)
            }),
            _ => false,
        };
        let members = Arc::new(Members::of(chat, blocked));
        self.members.insert(chat_id, members.clone());
        Ok(members)
    }

    fn commit(&mut self, change: Change) -> Result<Committed> {
        let chat_id = change.chat_id();
        let applied = self.apply(change)?;
        if matches!(
            applied,
            Applied::Membership { .. } | Applied::MlsMembership { .. }
        ) {
            self.members.remove(&chat_id);
        }
        Ok(Committed::new(applied, self.members(chat_id)?))
    }

    fn apply(&mut self, change: Change) -> Result<Applied> {
        match &change {
            Change::MlsCommit {
                expected_epoch,
                group,
                message,
                membership,
            } => {
                let chat_id = message.chat_id;
                let current = self.mls_groups.get(&chat_id).map(|g| g.epoch);
                rows::check_mls_epoch(current, *expected_epoch)?;
                let membership = match membership {
                    // Validated before it changes anything, as every change
                    // here; the post behind it is by a participant who just
                    // passed the same checks.
                    Some(change) => match self.apply((**change).clone())? {
                        Applied::Membership { message, .. } => Some(message),
                        _ => return Err(Error::invalid("not a membership change")),
                    },
                    None => None,
                };
                let applied = self.apply(Change::Post(message.clone()))?;
                self.mls_groups.insert(chat_id, group.clone());
                match (membership, applied) {
                    (Some(system), Applied::Posted { message, .. }) => {
                        self.members.remove(&chat_id);
                        Ok(Applied::MlsMembership {
                            chat: self.chat(chat_id)?.clone(),
                            message: system,
                            commit: Box::new(message),
                        })
                    }
                    (_, applied) => Ok(applied),
                }
            }
            Change::Post(new) => {
                if let Some(cid) = &new.client_msg_id {
                    if let Some(id) = self.client_ids.get(&(new.sender_id.clone(), cid.clone())) {
                        let (chat_id, seq) = self.message_index[id];
                        return rows::repost(self.logs[&chat_id][&seq].clone(), new);
                    }
                }
                let chat = self.chat(new.chat_id)?;
                if new.kind != MessageType::System && chat.participant(&new.sender_id).is_none() {
                    return Err(Error::not_found("chat not found"));
                }
                if let Some(reply_to) = new.reply_to {
                    match self.message_index.get(&reply_to) {
                        Some((c, _)) if *c == new.chat_id => {}
                        _ => {
                            return Err(Error::not_found(
                                "reply_to message not found in this chat",
                            ));
                        }
                    }
                }
                let seq = self.next_seq(new.chat_id, new.created_at)?;
                let message = new.clone().into_message(seq);
                self.insert_message(message.clone());
                Ok(Applied::Posted {
                    message,
                    duplicate: false,
                })
            }
            Change::Edit {
                chat_id,
                message_id,
                content,
                at,
            } => {
                rows::check_not_deleted(self.message_mut(*chat_id, *message_id)?)?;
                let seq = self.next_seq(*chat_id, *at)?;
                let m = self.message_mut(*chat_id, *message_id)?;
                rows::edit(m, content.clone(), *at, seq);
                Ok(Applied::Updated {
                    message: m.clone(),
                    changed: true,
                })
            }
            Change::Delete {
                chat_id,
                message_id,
                at,
            } => {
                let m = self.message_mut(*chat_id, *message_id)?;
                if m.deleted {
                    return Ok(Applied::Updated {
                        message: m.clone(),
                        changed: false,
                    });
                }
                let seq = self.next_seq(*chat_id, *at)?;
                let m = self.message_mut(*chat_id, *message_id)?;
                rows::tombstone(m, seq);
                Ok(Applied::Updated {
                    message: m.clone(),
                    changed: true,
                })
            }
            Change::React {
                chat_id,
                message_id,
                user_id,
                emoji,
                add,
                max_distinct,
                at,
            } => {
                let m = self.message_mut(*chat_id, *message_id)?;
                if !rows::reaction_changes(m, user_id, emoji, *add, *max_distinct)? {
                    return Ok(Applied::Updated {
                        message: m.clone(),
                        changed: false,
                    });
                }
                let seq = self.next_seq(*chat_id, *at)?;
                let m = self.message_mut(*chat_id, *message_id)?;
                rows::react(m, user_id, emoji, *add, seq);
                Ok(Applied::Updated {
                    message: m.clone(),
                    changed: true,
                })
            }
            Change::AddParticipant {
                chat_id,
                user_id,
                role,
                by,
                max_participants,
                at,
            } => {
                let chat = self.chat(*chat_id)?;
                rows::check_can_join(
                    chat.participant(user_id).is_some(),
                    chat.participants.len(),
                    *max_participants,
                )?;
                let message = self.system_message(&change, by, *at)?;
                let chat = self
                    .chats
                    .get_mut(chat_id)
                    .ok_or_else(|| Error::not_found("chat not found"))?;
                chat.participants.push(Participant {
                    user_id: user_id.clone(),
                    role: *role,
                    joined_at: *at,
                    delivered_seq: message.seq,
                    read_seq: message.seq,
                    visible_from_seq: message.seq,
                    silenced_until: None,
                    settings: Default::default(),
                });
                Ok(Applied::Membership {
                    chat: chat.clone(),
                    message: Some(message),
                })
            }
            Change::RemoveParticipant {
                chat_id,
                user_id,
                by,
                at,
            } => {
                if self.chat(*chat_id)?.participant(user_id).is_none() {
                    return Err(Error::not_found("not a participant"));
                }
                let message = self.system_message(&change, by, *at)?;
                let chat = self
                    .chats
                    .get_mut(chat_id)
                    .ok_or_else(|| Error::not_found("chat not found"))?;
                chat.participants.retain(|p| &p.user_id != user_id);
                let chat = chat.clone();
                // A direct chat one side left (erasure) is no longer the
                // pair's: a new one can be opened.
                if chat.kind == ChatKind::Direct {
                    self.direct.retain(|_, id| id != chat_id);
                }
                Ok(Applied::Membership {
                    chat,
                    message: Some(message),
                })
            }
            Change::SetRole {
                chat_id,
                user_id,
                role,
                by,
                at,
            } => {
                let chat = self.chat(*chat_id)?;
                let current = chat
                    .participant(user_id)
                    .ok_or_else(|| Error::not_found("not a participant"))?
                    .role;
                if current == *role {
                    return Ok(Applied::Membership {
                        chat: chat.clone(),
                        message: None,
                    });
                }
                rows::check_keeps_admin(chat, user_id, *role)?;
                let message = self.system_message(&change, by, *at)?;
                let chat = self
                    .chats
                    .get_mut(chat_id)
                    .ok_or_else(|| Error::not_found("chat not found"))?;
                for p in &mut chat.participants {
                    if &p.user_id == user_id {
                        p.role = *role;
                    }
                }
                Ok(Applied::Membership {
                    chat: chat.clone(),
                    message: Some(message),
                })
            }
            Change::Authorized { by, role, change } => {
                let held = self.chat(change.chat_id())?.participant(by).map(|p| p.role);
                check_authority(held, by, *role)?;
                self.apply((**change).clone())
            }
            Change::EnsureAdmin { chat_id, by, at } => {
                let chat = self.chat(*chat_id)?;
                match promotion_of_heir(chat, by, *at) {
                    Some(promotion) => self.apply(promotion),
                    None => Ok(Applied::Membership {
                        chat: chat.clone(),
                        message: None,
                    }),
                }
            }
            Change::UpdateGroup {
                chat_id,
                patch,
                by,
                at,
            } => {
                self.chat(*chat_id)?;
                let message = self.system_message(&change, by, *at)?;
                let chat = self
                    .chats
                    .get_mut(chat_id)
                    .ok_or_else(|| Error::not_found("chat not found"))?;
                let set = |field: &mut Option<String>, value: &Option<String>| {
                    if let Some(v) = value {
                        *field = (!v.is_empty()).then(|| v.clone());
                    }
                };
                set(&mut chat.name, &patch.name);
                set(&mut chat.description, &patch.description);
                set(&mut chat.avatar_url, &patch.avatar_url);
                Ok(Applied::Membership {
                    chat: chat.clone(),
                    message: Some(message),
                })
            }
            Change::SetRetention {
                chat_id,
                seconds,
                by,
                at,
            } => {
                let chat = self.chat(*chat_id)?;
                if chat.retention_secs == *seconds {
                    return Ok(Applied::Membership {
                        chat: chat.clone(),
                        message: None,
                    });
                }
                let message = self.system_message(&change, by, *at)?;
                let chat = self
                    .chats
                    .get_mut(chat_id)
                    .ok_or_else(|| Error::not_found("chat not found"))?;
                chat.retention_secs = *seconds;
                Ok(Applied::Membership {
                    chat: chat.clone(),
                    message: Some(message),
                })
            }
            Change::Mark {
                chat_id,
                user_id,
                delivered_up_to,
                read_up_to,
                at,
            } => {
                let chat = self
                    .chats
                    .get_mut(chat_id)
                    .ok_or_else(|| Error::not_found("chat not found"))?;
                let last = chat.last_seq;
                let p = chat
                    .participants
                    .iter_mut()
                    .find(|p| &p.user_id == user_id)
                    .ok_or_else(|| Error::not_found("not a participant"))?;
                let was = (p.delivered_seq, p.read_seq);
                let marked = Marked::new(last, was, *delivered_up_to, *read_up_to);
                p.delivered_seq = marked.delivered_seq;
                p.read_seq = marked.read_seq;
                let first_delivered = self.time_receipts(*chat_id, user_id, was, marked, *at);
                Ok(marked.applied(first_delivered))
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn apply(&self, changes: Vec<Change>) -> Vec<Result<Committed>> {
        let mut state = self.lock();
        changes.into_iter().map(|c| state.commit(c)).collect()
    }

    async fn create_chat(&self, new: NewChat) -> Result<(Chat, bool)> {
        let mut state = self.lock();
        let key = match rows::direct_pair(&new)? {
            Some((a, b)) => {
                let key = direct_key(a, b);
                if let Some(id) = state.direct.get(&key) {
                    return Ok((state.chats[id].clone(), false));
                }
                Some(key)
            }
            None => None,
        };
        let chat = new.into_chat();
        if state.chats.contains_key(&chat.id) {
            return Err(Error::conflict("chat id exists"));
        }
        if let Some(key) = key {
            state.direct.insert(key, chat.id);
        }
        state.chats.insert(chat.id, chat.clone());
        Ok((chat, true))
    }

    async fn get_chat(&self, id: ChatId) -> Result<Option<Chat>> {
        Ok(self.lock().chats.get(&id).cloned())
    }

    async fn find_direct_chat(&self, a: &UserId, b: &UserId) -> Result<Option<Chat>> {
        let state = self.lock();
        Ok(state
            .direct
            .get(&direct_key(a, b))
            .map(|id| state.chats[id].clone()))
    }

    async fn list_chats(&self, user: &UserId, query: ChatListQuery) -> Result<Vec<Chat>> {
        let state = self.lock();
        let mut chats: Vec<&Chat> = state
            .chats
            .values()
            .filter(|c| c.participant(user).is_some())
            .filter(|c| {
                query
                    .after
                    .is_none_or(|after| (c.last_activity, c.id) < after)
            })
            .collect();
        chats.sort_by_key(|c| std::cmp::Reverse((c.last_activity, c.id)));
        Ok(chats.into_iter().take(query.limit).cloned().collect())
    }

    async fn set_participant_settings(
        &self,
        chat: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> Result<()> {
        let mut state = self.lock();
        let p = state
            .chats
            .get_mut(&chat)
            .and_then(|c| c.participants.iter_mut().find(|p| &p.user_id == user))
            .ok_or_else(|| Error::not_found("not a participant"))?;
        p.settings = settings;
        state.members.remove(&chat);
        Ok(())
    }

    async fn group_count(&self, user: &UserId) -> Result<u64> {
        let state = self.lock();
        Ok(state
            .chats
            .values()
            .filter(|c| c.kind == ChatKind::Group && c.participant(user).is_some())
            .count() as u64)
    }

    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>> {
        let state = self.lock();
        let mut out: Vec<UserId> = state
            .chats
            .values()
            .filter(|c| c.participant(user).is_some())
            .flat_map(|c| c.participants.iter().map(|p| p.user_id.clone()))
            .filter(|u| u != user)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        out.sort();
        Ok(out)
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<Message>> {
        let state = self.lock();
        Ok(state
            .message_index
            .get(&id)
            .and_then(|(c, seq)| state.logs.get(c)?.get(seq))
            .cloned())
    }

    async fn find_by_client_id(
        &self,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>> {
        let state = self.lock();
        Ok(state
            .client_ids
            .get(&(sender.clone(), client_msg_id.to_owned()))
            .and_then(|id| state.message_index.get(id))
            .and_then(|(c, seq)| state.logs.get(c)?.get(seq))
            .cloned())
    }

    async fn history(&self, chat: ChatId, q: HistoryQuery) -> Result<Vec<Message>> {
        let state = self.lock();
        let Some(log) = state.logs.get(&chat) else {
            return Ok(Vec::new());
        };
        let seqs = q.seqs();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(log
            .range(seqs)
            .rev()
            .take(q.limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn changes(
        &self,
        chat: ChatId,
        after: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let state = self.lock();
        let Some(log) = state.logs.get(&chat) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<&Message> = log
            .range(from_seq..)
            .map(|(_, m)| m)
            .filter(|m| m.updated_seq > after)
            .collect();
        out.sort_by_key(|m| m.updated_seq);
        Ok(out.into_iter().take(limit).cloned().collect())
    }

    async fn unread_count(&self, chat: ChatId, user: &UserId, after_seq: u64) -> Result<u64> {
        let state = self.lock();
        let Some(log) = state.logs.get(&chat) else {
            return Ok(0);
        };
        Ok(log
            .range(after_seq.saturating_add(1)..)
            .filter(|(_, m)| &m.sender_id != user && m.kind != MessageType::System && !m.deleted)
            .count() as u64)
    }

    async fn set_block(&self, blocker: &UserId, blocked: &UserId, on: bool) -> Result<bool> {
        let mut state = self.lock();
        let key = (blocker.clone(), blocked.clone());
        let pos = state.blocks.iter().position(|b| *b == key);
        if let Some(chat) = state.direct.get(&direct_key(blocker, blocked)).copied() {
            state.members.remove(&chat);
        }
        Ok(match (on, pos) {
            (true, None) => {
                state.blocks.push(key);
                true
            }
            (false, Some(i)) => {
                state.blocks.remove(i);
                true
            }
            _ => false,
        })
    }

    async fn blocked_by_user(&self, user: &UserId) -> Result<Vec<UserId>> {
        Ok(self
            .lock()
            .blocks
            .iter()
            .filter(|(a, _)| a == user)
            .map(|(_, b)| b.clone())
            .collect())
    }

    async fn blockers_of(&self, user: &UserId) -> Result<Vec<UserId>> {
        Ok(self
            .lock()
            .blocks
            .iter()
            .filter(|(_, b)| b == user)
            .map(|(a, _)| a.clone())
            .collect())
    }

    async fn is_blocked_either(&self, a: &UserId, b: &UserId) -> Result<bool> {
        Ok(self
            .lock()
            .blocks
            .iter()
            .any(|(x, y)| (x == a && y == b) || (x == b && y == a)))
    }

    async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>> {
        Ok(self.lock().users.get(user).cloned())
    }

    async fn set_last_seen(&self, user: &UserId, at: Timestamp) -> Result<()> {
        self.lock()
            .users
            .entry(user.clone())
            .or_insert_with(|| UserRecord::new(user.clone()))
            .last_seen = Some(at);
        Ok(())
    }

    async fn set_privacy(&self, user: &UserId, privacy: Privacy) -> Result<()> {
        self.lock()
            .users
            .entry(user.clone())
            .or_insert_with(|| UserRecord::new(user.clone()))
            .privacy = privacy;
        Ok(())
    }

    async fn set_suspension(&self, user: &UserId, until: Option<Timestamp>) -> Result<()> {
        self.lock()
            .users
            .entry(user.clone())
            .or_insert_with(|| UserRecord::new(user.clone()))
            .suspended_until = until;
        Ok(())
    }

    async fn set_silenced(
        &self,
        chat: ChatId,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> Result<bool> {
        let mut state = self.lock();
        let participant = state
            .chats
            .get_mut(&chat)
            .and_then(|c| c.participants.iter_mut().find(|p| p.user_id == *user));
        Ok(match participant {
            Some(p) => {
                p.silenced_until = until;
                true
            }
            None => false,
        })
    }

    async fn insert_report(&self, report: Report) -> Result<Report> {
        let mut state = self.lock();
        if let Some(existing) = state.reports.values().find(|r| {
            r.reporter_id == report.reporter_id
                && r.message_id == report.message_id
                && r.status == ReportStatus::Open
        }) {
            return Ok(existing.clone());
        }
        state.reports.insert(report.id, report.clone());
        Ok(report)
    }

    async fn get_report(&self, id: ReportId) -> Result<Option<Report>> {
        Ok(self.lock().reports.get(&id).cloned())
    }

    async fn list_reports(&self, query: ReportQuery) -> Result<Vec<Report>> {
        Ok(self
            .lock()
            .reports
            .values()
            .filter(|r| query.matches(r))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn resolve_report(&self, res: ReportResolution) -> Result<Report> {
        let mut state = self.lock();
        let report = state
            .reports
            .get_mut(&res.id)
            .ok_or_else(|| Error::not_found("report not found"))?;
        rows::resolve(report, res)?;
        Ok(report.clone())
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<()> {
        let mut state = self.lock();
        if state.audit.contains_key(&entry.id) {
            return Err(Error::conflict("audit entry id exists"));
        }
        state.audit.insert(entry.id, entry);
        Ok(())
    }

    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>> {
        Ok(self
            .lock()
            .audit
            .values()
            .rev()
            .filter(|e| query.matches(e))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn pseudonymize_audit(&self, user: &UserId, pseudonym: &UserId) -> Result<u64> {
        let mut changed = 0;
        for entry in self.lock().audit.values_mut() {
            let as_actor = entry.actor_id == *user;
            let as_target =
                entry.target_type == AuditTarget::User && entry.target_id == user.as_str();
            if as_actor {
                entry.actor_id = pseudonym.clone();
            }
            if as_target {
                entry.target_id = pseudonym.to_string();
            }
            changed += u64::from(as_actor || as_target);
        }
        Ok(changed)
    }

    async fn insert_media(&self, record: MediaRecord) -> Result<()> {
        let mut state = self.lock();
        if state.media.contains_key(&record.id) {
            return Err(Error::conflict("media id exists"));
        }
        state.media.insert(record.id, record);
        Ok(())
    }

    async fn get_media(&self, id: MediaId) -> Result<Option<MediaRecord>> {
        Ok(self.lock().media.get(&id).cloned())
    }

    async fn attach_media(&self, id: MediaId, message: MessageId) -> Result<bool> {
        let mut state = self.lock();
        match state.media.get_mut(&id) {
            Some(record) if record.message_id.is_none() => {
                record.message_id = Some(message);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn detach_media(&self, id: MediaId, message: MessageId) -> Result<()> {
        let mut state = self.lock();
        if let Some(record) = state.media.get_mut(&id) {
            if record.message_id == Some(message) {
                record.message_id = None;
            }
        }
        Ok(())
    }

    async fn delete_media(&self, id: MediaId) -> Result<Option<MediaRecord>> {
        Ok(self.lock().media.remove(&id))
    }

    async fn unattached_media(&self, before: Timestamp, limit: usize) -> Result<Vec<MediaRecord>> {
        let state = self.lock();
        let mut found: Vec<MediaRecord> = state
            .media
            .values()
            .filter(|m| m.message_id.is_none() && m.created_at < before)
            .cloned()
            .collect();
        found.sort_by_key(|m| (m.created_at, m.id));
        found.truncate(limit);
        Ok(found)
    }

    async fn publish_key_packages(
        &self,
        user: &UserId,
        device: &DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        _at: Timestamp,
    ) -> Result<u64> {
        let mut state = self.lock();
        let entry = state
            .key_packages
            .entry((user.clone(), device.clone()))
            .or_default();
        let total = entry.packages.len() as u64 + packages.len() as u64;
        if total > MAX_KEY_PACKAGES_PER_DEVICE {
            return Err(Error::conflict(format!(
                "a device keeps at most {MAX_KEY_PACKAGES_PER_DEVICE} key packages; it has {}",
                entry.packages.len()
            )));
        }
        entry.packages.extend(packages);
        if last_resort.is_some() {
            entry.last_resort = last_resort;
        }
        Ok(entry.packages.len() as u64)
    }

    async fn key_packages_of(&self, user: &UserId) -> Result<Vec<PublishedKeyPackage>> {
        let state = self.lock();
        let mut out = Vec::new();
        for ((_, device), entry) in state.key_packages.iter().filter(|((u, _), _)| u == user) {
            let packages = entry.packages.iter().map(|p| (p, false));
            let last = entry.last_resort.iter().map(|p| (p, true));
            out.extend(
                packages
                    .chain(last)
                    .map(|(p, last_resort)| PublishedKeyPackage {
                        device_id: device.clone(),
                        key_package: p.clone(),
                        last_resort,
                    }),
            );
        }
        Ok(out)
    }

    async fn claim_key_packages(&self, users: &[UserId]) -> Result<Vec<ClaimedKeyPackage>> {
        let mut state = self.lock();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for user in users {
            if !seen.insert(user) {
                continue;
            }
            let devices = state
                .key_packages
                .iter_mut()
                .filter(|((u, _), _)| u == user);
            for ((user_id, device_id), entry) in devices {
                let (key_package, last_resort) = match entry.packages.pop_front() {
                    Some(package) => (package, false),
                    None => match &entry.last_resort {
                        Some(package) => (package.clone(), true),
                        None => continue,
                    },
                };
                out.push(ClaimedKeyPackage {
                    user_id: user_id.clone(),
                    device_id: device_id.clone(),
                    key_package,
                    last_resort,
                    remaining: entry.packages.len() as u64,
                });
            }
        }
        Ok(out)
    }

    async fn pin_device_key(
        &self,
        user: &UserId,
        device: &DeviceId,
        key: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut state = self.lock();
        Ok(state
            .device_keys
            .entry((user.clone(), device.clone()))
            .or_insert(key)
            .clone())
    }

    async fn device_keys(&self, devices: &[(UserId, DeviceId)]) -> Result<Vec<Option<Vec<u8>>>> {
        let state = self.lock();
        Ok(devices
            .iter()
            .map(|d| state.device_keys.get(d).cloned())
            .collect())
    }

    async fn get_mls_group(&self, chat: ChatId) -> Result<Option<MlsGroupRecord>> {
        Ok(self.lock().mls_groups.get(&chat).cloned())
    }

    async fn retention_chats(
        &self,
        after: Option<ChatId>,
        limit: usize,
    ) -> Result<Vec<RetentionChat>> {
        let state = self.lock();
        let mut found: Vec<RetentionChat> = state
            .chats
            .values()
            .filter(|c| after.is_none_or(|a| c.id > a))
            .filter_map(|c| {
                Some(RetentionChat {
                    chat_id: c.id,
                    seconds: c.retention_secs?,
                    swept_seq: state.retention_swept.get(&c.id).copied().unwrap_or(0),
                })
            })
            .collect();
        found.sort_by_key(|c| c.chat_id);
        found.truncate(limit);
        Ok(found)
    }

    async fn expired_messages(
        &self,
        chat: ChatId,
        after_seq: u64,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<ExpiredMessage>> {
        let state = self.lock();
        let Some(log) = state.logs.get(&chat) else {
            return Ok(Vec::new());
        };
        Ok(log
            .range(after_seq.saturating_add(1)..)
            .map(|(_, m)| m)
            .take_while(|m| m.created_at < before)
            .take(limit)
            .map(ExpiredMessage::of)
            .collect())
    }

    async fn set_retention_watermark(&self, chat: ChatId, seq: u64) -> Result<()> {
        let mut state = self.lock();
        if state.chats.contains_key(&chat) {
            let swept = state.retention_swept.entry(chat).or_default();
            *swept = (*swept).max(seq);
        }
        Ok(())
    }

    async fn stored_texts(
        &self,
        table: TextTable,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredText>> {
        let state = self.lock();
        // Ids are ULIDs: their order is their text's order.
        let after = after.unwrap_or("");
        let mut texts: Vec<StoredText> = match table {
            TextTable::Messages => state
                .logs
                .values()
                .flat_map(|log| log.values())
                .filter_map(|m| {
                    let text = m.content.as_ref()?;
                    Some(StoredText {
                        row: m.id.to_string(),
                        chat_id: m.chat_id,
                        author: m.sender_id.clone(),
                        message_id: m.id,
                        text: text.clone(),
                    })
                })
                .filter(|t| t.row.as_str() > after)
                .collect(),
            TextTable::Reports => state
                .reports
                .values()
                .filter_map(|r| {
                    let text = r.content.as_ref()?;
                    Some(StoredText {
                        row: r.id.to_string(),
                        chat_id: r.chat_id,
                        author: r.reported_user_id.clone(),
                        message_id: r.message_id,
                        text: text.clone(),
                    })
                })
                .filter(|t| t.row.as_str() > after)
                .collect(),
        };
        texts.sort_by(|a, b| a.row.cmp(&b.row));
        texts.truncate(limit);
        Ok(texts)
    }

    async fn replace_texts(&self, replacements: Vec<TextReplacement>) -> Result<usize> {
        let mut state = self.lock();
        let mut replaced = 0;
        for r in replacements {
            let slot = match r.table {
                TextTable::Messages => {
                    let Ok(id) = r.row.parse::<MessageId>() else {
                        continue;
                    };
                    let Some(&(chat, seq)) = state.message_index.get(&id) else {
                        continue;
                    };
                    state
                        .logs
                        .get_mut(&chat)
                        .and_then(|log| log.get_mut(&seq))
                        .map(|m| &mut m.content)
                }
                TextTable::Reports => {
                    let Ok(id) = r.row.parse::<ReportId>() else {
                        continue;
                    };
                    state.reports.get_mut(&id).map(|report| &mut report.content)
                }
            };
            if let Some(content) = slot {
                if content.as_deref() == Some(r.old.as_str()) {
                    *content = Some(r.new);
                    replaced += 1;
                }
            }
        }
        Ok(replaced)
    }

    async fn answer_checkin(&self, answer: CheckinAnswer) -> Result<()> {
        let mut state = self.lock();
        match state
            .answers
            .iter_mut()
            .find(|a| a.message_id == answer.message_id && a.user_id == answer.user_id)
        {
            Some(given) => *given = answer,
            None => state.answers.push(answer),
        }
        Ok(())
    }

    async fn checkin_answers(&self, message: MessageId) -> Result<Vec<CheckinAnswer>> {
        Ok(self
            .lock()
            .answers
            .iter()
            .filter(|a| a.message_id == message)
            .cloned()
            .collect())
    }

    async fn answers_by_user(
        &self,
        user: &UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<CheckinAnswer>> {
        let state = self.lock();
        let mut found: Vec<CheckinAnswer> = state
            .answers
            .iter()
            .filter(|a| a.user_id == *user && after.is_none_or(|after| a.message_id > after))
            .cloned()
            .collect();
        found.sort_by_key(|a| a.message_id);
        found.truncate(limit);
        Ok(found)
    }

    async fn record_session(&self, user: &UserId, at: Timestamp) -> Result<()> {
        let day = at.as_millis().div_euclid(DAY_MS);
        *self.lock().sessions.entry((day, user.clone())).or_default() += 1;
        Ok(())
    }

    async fn stats(&self, from: i64, to: i64) -> Result<StatsRows> {
        let state = self.lock();
        let day_of = |t: Timestamp| t.as_millis().div_euclid(DAY_MS);
        let (first_week, last_week) = (week_of_day(from), week_of_day(to));
        let mut days: BTreeMap<i64, (u64, HashSet<&UserId>, u64)> = BTreeMap::new();
        let mut active: HashSet<&UserId> = HashSet::new();
        let mut rows = StatsRows::default();
        let mut weeks: HashSet<(ChatId, i64)> = HashSet::new();
        for (chat_id, log) in &state.logs {
            for m in log.values().filter(|m| counted_kind(m.kind)) {
                let day = day_of(m.created_at);
                let week = week_of_day(day);
                if (first_week..=last_week + 1).contains(&week) {
                    weeks.insert((*chat_id, week));
                }
                if !(from..=to).contains(&day) {
                    continue;
                }
                let entry = days.entry(day).or_default();
                entry.0 += 1;
                entry.1.insert(&m.sender_id);
                active.insert(&m.sender_id);
                rows.messages += 1;
                if let Some((delivered, read)) = state.receipts.get(&(*chat_id, m.seq)) {
                    let after = |t: Timestamp| t.as_millis() - m.created_at.as_millis();
                    rows.delivered_within_1s += u64::from(after(*delivered) <= 1000);
                    rows.read_within_24h += u64::from(read.is_some_and(|r| after(r) <= DAY_MS));
                }
            }
        }
        let sessions = state.sessions.iter();
        for ((day, user), n) in sessions.filter(|((day, _), _)| (from..=to).contains(day)) {
            days.entry(*day).or_default().1.insert(user);
            active.insert(user);
            rows.sessions += n;
        }
        for chat in state.chats.values() {
            let day = day_of(chat.created_at);
            if (from..=to).contains(&day) {
                days.entry(day).or_default().2 += 1;
            }
            if chat.kind != ChatKind::Direct {
                continue;
            }
            let mut log = state
                .logs
                .get(&chat.id)
                .into_iter()
                .flat_map(|l| l.values());
            let Some(first) = log.by_ref().find(|m| counted_kind(m.kind)) else {
                continue;
            };
            if !(from..=to).contains(&day_of(first.created_at)) {
                continue;
            }
            match log.find(|m| counted_kind(m.kind) && m.sender_id != first.sender_id) {
                Some(reply) => rows.first_replies_ms.push(
                    u64::try_from(reply.created_at.as_millis() - first.created_at.as_millis())
                        .unwrap_or(0),
                ),
                None => rows.unanswered += 1,
            }
        }
        rows.days = days
            .into_iter()
            .map(|(day, (messages, users, new_chats))| DayCounts {
                day,
                messages,
                active_users: users.len() as u64,
                new_chats,
            })
            .collect();
        rows.active_users = active.len() as u64;
        let mut by_week: BTreeMap<i64, WeekCounts> = BTreeMap::new();
        for (chat, week) in weeks.iter().filter(|(_, w)| *w <= last_week) {
            let counts = by_week.entry(*week).or_insert(WeekCounts {
                week: *week,
                ..WeekCounts::default()
            });
            counts.active_chats += 1;
            counts.retained += u64::from(weeks.contains(&(*chat, week + 1)));
        }
        rows.weeks = by_week.into_values().collect();
        Ok(rows)
    }

    async fn messages_by_sender(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SentMessage>> {
        let state = self.lock();
        let mut found: Vec<SentMessage> = state
            .client_ids
            .iter()
            .filter(|((sender, key), _)| sender == user && after.is_none_or(|a| key.as_str() > a))
            .filter_map(|((_, key), id)| {
                let (chat, seq) = state.message_index.get(id)?;
                let m = state.logs.get(chat)?.get(seq)?;
                let erasable =
                    !m.deleted && !matches!(m.kind, MessageType::System | MessageType::MlsCommit);
                erasable.then(|| SentMessage {
                    chat_id: *chat,
                    id: *id,
                    client_msg_id: key.clone(),
                })
            })
            .collect();
        found.sort_by(|a, b| a.client_msg_id.cmp(&b.client_msg_id));
        found.truncate(limit);
        Ok(found)
    }

    async fn reactions_by_user(&self, user: &UserId, limit: usize) -> Result<Vec<UserReaction>> {
        let state = self.lock();
        Ok(state
            .logs
            .iter()
            .flat_map(|(chat, log)| log.values().map(move |m| (*chat, m)))
            .flat_map(|(chat, m)| {
                m.reactions
                    .iter()
                    .filter(|(_, users)| users.contains(user))
                    .map(move |(emoji, _)| UserReaction {
                        chat_id: chat,
                        message_id: m.id,
                        emoji: emoji.clone(),
                    })
            })
            .take(limit)
            .collect())
    }

    async fn media_by_uploader(
        &self,
        user: &UserId,
        after: Option<MediaId>,
        limit: usize,
    ) -> Result<Vec<MediaRecord>> {
        let state = self.lock();
        let mut found: Vec<MediaRecord> = state
            .media
            .values()
            .filter(|m| m.uploader_id == *user && after.is_none_or(|a| m.id > a))
            .cloned()
            .collect();
        found.sort_by_key(|m| m.id);
        found.truncate(limit);
        Ok(found)
    }

    async fn hold_reports(
        &self,
        user: &UserId,
        pseudonym: &UserId,
        held: Vec<HeldSnapshot>,
    ) -> Result<HeldReports> {
        let mut state = self.lock();
        let mut done = HeldReports::default();
        for report in state.reports.values_mut() {
            if report.reported_user_id != *user {
                continue;
            }
            report.reported_user_id = pseudonym.clone();
            if report.status == ReportStatus::Open {
                report.legal_hold = true;
                if let Some(snapshot) = held.iter().find(|h| h.id == report.id) {
                    report.content = snapshot.content.clone();
                }
                done.held += 1;
            } else {
                report.content = None;
                report.media = None;
                done.destroyed += 1;
            }
        }
        Ok(done)
    }

    async fn erase_user_rows(&self, user: &UserId, pseudonym: &UserId) -> Result<ErasedRows> {
        let mut state = self.lock();
        let state = &mut *state;
        let mut rows = ErasedRows::default();
        let keys: Vec<(UserId, String)> = state
            .client_ids
            .keys()
            .filter(|(sender, _)| sender == user)
            .cloned()
            .collect();
        for key in keys {
            let Some(id) = state.client_ids.remove(&key) else {
                continue;
            };
            let Some((chat, seq)) = state.message_index.get(&id).copied() else {
                continue;
            };
            if let Some(m) = state.logs.get_mut(&chat).and_then(|log| log.get_mut(&seq)) {
                m.sender_id = pseudonym.clone();
                m.client_msg_id = None;
                rows.messages += 1;
            }
        }
        for report in state.reports.values_mut() {
            if report.reporter_id == *user {
                report.reporter_id = pseudonym.clone();
                report.reason.clear();
                rows.reports_filed += 1;
            }
        }
        for media in state.media.values_mut() {
            if media.uploader_id == *user {
                media.uploader_id = pseudonym.clone();
            }
        }
        // Sessions stay counted, under the pseudonym: the past's stats do
        // not change, and nothing names the user.
        let sessions: Vec<_> = state
            .sessions
            .keys()
            .filter(|(_, u)| u == user)
            .cloned()
            .collect();
        for key in sessions {
            if let Some(n) = state.sessions.remove(&key) {
                *state
                    .sessions
                    .entry((key.0, pseudonym.clone()))
                    .or_default() += n;
            }
        }
        let before = state.blocks.len();
        state.blocks.retain(|(blocker, _)| blocker != user);
        rows.blocks = (before - state.blocks.len()) as u64;
        state.key_packages.retain(|(u, _), packages| {
            let mine = u == user;
            if mine {
                rows.key_packages +=
                    packages.packages.len() as u64 + u64::from(packages.last_resort.is_some());
            }
            !mine
        });
        state.device_keys.retain(|(u, _), _| {
            let mine = u == user;
            rows.device_keys += u64::from(mine);
            !mine
        });
        for log in state.logs.values_mut() {
            for m in log.values_mut() {
                for users in m.reactions.values_mut() {
                    let before = users.len();
                    users.retain(|u| u != user);
                    rows.reactions += (before - users.len()) as u64;
                }
                m.reactions.retain(|_, users| !users.is_empty());
            }
        }
        for chat in state.chats.values_mut() {
            let before = chat.participants.len();
            chat.participants.retain(|p| p.user_id != *user);
            if chat.participants.len() != before {
                rows.memberships += 1;
                state.members.remove(&chat.id);
                if chat.kind == ChatKind::Direct {
                    // No longer the pair's, as when its side leaves.
                    let id = chat.id;
                    state.direct.retain(|_, chat| *chat != id);
                }
            }
        }
        let before = state.answers.len();
        state.answers.retain(|a| a.user_id != *user);
        rows.checkin_answers = (before - state.answers.len()) as u64;
        rows.user = state.users.remove(user).is_some();
        Ok(rows)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().meta.get(key).cloned())
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.lock().meta.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}
