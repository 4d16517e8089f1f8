//! Groups: participants, roles, the group's name, description and avatar,
//! and who may be added to a group.

use super::{
    Actor, ChatEngine, unexpected,
    validate::{MAX_DESCRIPTION, group_name, optional_text, optional_url},
    writer::{EventKind, Fanout},
};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    event::ServerEvent,
    model::{AuditAction, AuditTarget, Chat, ChatId, ChatKind, ChatView, Role, Timestamp, UserId},
    store::{Change, GroupPatch},
};

impl ChatEngine {
    fn group_role(chat: &Chat, user: &UserId) -> Result<Role> {
        if chat.kind != ChatKind::Group {
            return Err(Error::invalid("this is not a group"));
        }
        chat.participant(user)
            .map(|p| p.role)
            .ok_or_else(|| Error::not_found("chat not found"))
    }

    /// Adds a participant: admins add with any role, moderators members.
    pub async fn add_participant(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
        role: Role,
    ) -> Result<()> {
        let (_, change) = self.adding(actor, chat_id, user, role).await?;
        self.membership(change).await?;
        Ok(())
    }

    /// The checks of [`add_participant`](Self::add_participant), and the
    /// change it applies.
    pub(super) async fn adding(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
        role: Role,
    ) -> Result<(Chat, Change)> {
        let chat = self.chat_of(actor, chat_id).await?;
        match (Self::group_role(&chat, &actor.user_id)?, role) {
            (Role::Admin, _) | (Role::Moderator, Role::Member) => {}
            (Role::Moderator, _) => {
                return Err(Error::forbidden("moderators may only add members"));
            }
            (Role::Member, _) => {
                return Err(Error::forbidden(
                    "only admins and moderators may add participants",
                ));
            }
        }
        if chat.participant(user).is_some() {
            return Err(Error::conflict(format!("{user} is already a participant")));
        }
        self.may_add(&actor.user_id, user).await?;
        self.room_for_group(user).await?;
        let change = Change::AddParticipant {
            chat_id,
            user_id: user.clone(),
            role,
            by: actor.user_id.clone(),
            max_participants: self.inner.config.max_group_members,
            at: self.now(),
        };
        // Admins add with any role, moderators members: checked again at
        // commit, where a change committed meanwhile may have removed or
        // demoted the actor.
        let needs = if role == Role::Member {
            Role::Moderator
        } else {
            Role::Admin
        };
        Ok((chat, change.authorized(&actor.user_id, needs)))
    }

    /// Removes a participant: admins anyone, moderators members, anyone
    /// themselves (leaving). When the last admin leaves, the longest-standing
    /// moderator, else member, becomes admin, so that no group is orphaned.
    pub async fn remove_participant(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
    ) -> Result<()> {
        let (_, change, ensure) = self.removing(actor, chat_id, user).await?;
        self.inner
            .writer
            .submit_framed(change, Fanout::new(EventKind::Membership), Some(ensure))
            .await?;
        self.audit_removal(actor, chat_id, user).await;
        Ok(())
    }

    /// Audits a committed removal of `user` by `actor`, unless they left.
    pub(super) async fn audit_removal(&self, actor: &Actor, chat_id: ChatId, user: &UserId) {
        if user != &actor.user_id {
            self.audit(
                actor,
                AuditAction::RemoveParticipant,
                AuditTarget::User,
                user,
                Some(chat_id),
                None,
            )
            .await;
        }
    }

    /// The checks of [`remove_participant`](Self::remove_participant), the
    /// change it applies and the promotion of an heir behind it.
    pub(super) async fn removing(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
    ) -> Result<(Chat, Change, Change)> {
        let chat = self.chat_of(actor, chat_id).await?;
        let my_role = Self::group_role(&chat, &actor.user_id)?;
        let target = chat
            .participant(user)
            .ok_or_else(|| Error::not_found(format!("{user} is not a participant")))?;
        let allowed = user == &actor.user_id
            || my_role == Role::Admin
            || (my_role == Role::Moderator && target.role == Role::Member);
        if !allowed {
            return Err(Error::forbidden("you may not remove this participant"));
        }
        let change = Change::RemoveParticipant {
            chat_id,
            user_id: user.clone(),
            by: actor.user_id.clone(),
            at: self.now(),
        };
        // Leaving needs no role; removing someone else needs the actor's
        // role to hold when the removal commits.
        let change = if user == &actor.user_id {
            change
        } else if target.role == Role::Member {
            change.authorized(&actor.user_id, Role::Moderator)
        } else {
            change.authorized(&actor.user_id, Role::Admin)
        };
        // The heir is chosen and promoted by the store at commit, in the
        // same batch as the removal: two admins leaving at once cannot
        // leave the group without one, and nothing comes between.
        let ensure = Change::EnsureAdmin {
            chat_id,
            by: actor.user_id.clone(),
            at: self.now(),
        };
        Ok((chat, change, ensure))
    }

    /// Applies a membership change or group update through the chat's lane.
    async fn membership(&self, change: Change) -> Result<crate::store::Applied> {
        self.inner
            .writer
            .submit(change, Fanout::new(EventKind::Membership))
            .await
    }

    /// Changes a participant's role (admins only). The last admin cannot
    /// step down while others remain.
    pub async fn set_role(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
        role: Role,
    ) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        if Self::group_role(&chat, &actor.user_id)? != Role::Admin {
            return Err(Error::forbidden("only admins may change roles"));
        }
        let target = chat
            .participant(user)
            .ok_or_else(|| Error::not_found(format!("{user} is not a participant")))?;
        // The store checks this again at commit, where two admins demoting
        // each other at once cannot both pass.
        if target.role == Role::Admin && crate::store::demotes_last_admin(&chat, user, role) {
            return Err(Error::conflict(
                "a group needs an admin; make someone else admin first",
            ));
        }
        let change = Change::SetRole {
            chat_id,
            user_id: user.clone(),
            role,
            by: actor.user_id.clone(),
            at: self.now(),
        };
        self.membership(change.authorized(&actor.user_id, Role::Admin))
            .await?;
        self.audit(
            actor,
            AuditAction::SetRole,
            AuditTarget::User,
            user,
            Some(chat_id),
            Some(role.as_str().to_owned()),
        )
        .await;
        Ok(())
    }

    /// Mutes a group member until `until` (`None`, or a time already past,
    /// lifts it): admins mute anyone but themselves, moderators members.
    /// A muted member cannot send (nor post check-ins); they still react,
    /// type, read and answer. Participants get `participant_updated`.
    pub async fn mute_participant(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        let role = Self::group_role(&chat, &actor.user_id)?;
        let target = chat
            .participant(user)
            .ok_or_else(|| Error::not_found(format!("{user} is not a participant")))?;
        if *user == actor.user_id {
            return Err(Error::invalid("you cannot mute yourself"));
        }
        match (role, target.role) {
            (Role::Admin, _) | (Role::Moderator, Role::Member) => {}
            (Role::Moderator, _) => {
                return Err(Error::forbidden("moderators mute members only"));
            }
            (Role::Member, _) => {
                return Err(Error::forbidden("only admins and moderators may mute"));
            }
        }
        let target_role = target.role;
        let until = until.filter(|t| *t > self.now());
        if !self.inner.store.set_silenced(chat_id, user, until).await? {
            return Err(Error::not_found(format!("{user} is not a participant")));
        }
        // Sends read the chat from the cache: it must see the mute now.
        self.inner.chats.invalidate(chat_id);
        let event = ServerEvent::ParticipantUpdated {
            chat_id,
            user_id: user.clone(),
            role: target_role,
            muted_until: until,
        };
        self.publish(
            Audience::users(chat.member_ids()),
            Action::Event(event.encode()),
        )
        .await;
        let note = until.map_or_else(|| "lifted".to_owned(), |t| format!("until {t}"));
        self.audit(
            actor,
            AuditAction::MuteParticipant,
            AuditTarget::User,
            user,
            Some(chat_id),
            Some(note),
        )
        .await;
        Ok(())
    }

    /// Updates the group's name, description or avatar (admins only).
    pub async fn update_group(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        patch: GroupPatch,
    ) -> Result<ChatView> {
        let chat = self.chat_of(actor, chat_id).await?;
        let patch = Self::checked_group_patch(&chat, actor, patch)?;
        self.apply_group_patch(actor, chat_id, patch).await
    }

    /// `patch` validated for the actor on `chat`, before anything is
    /// written: only admins update a group, and its fields have limits.
    pub(super) fn checked_group_patch(
        chat: &Chat,
        actor: &Actor,
        patch: GroupPatch,
    ) -> Result<GroupPatch> {
        if Self::group_role(chat, &actor.user_id)? != Role::Admin {
            return Err(Error::forbidden("only admins may update the group"));
        }
        let patch = GroupPatch {
            name: patch.name.as_deref().map(group_name).transpose()?,
            description: match patch.description.as_deref() {
                None => None,
                Some(d) => Some(
                    optional_text("description", Some(d), MAX_DESCRIPTION)?.unwrap_or_default(),
                ),
            },
            avatar_url: match patch.avatar_url.as_deref() {
                None => None,
                Some(u) => Some(optional_url(Some(u))?.unwrap_or_default()),
            },
        };
        if patch.is_empty() {
            return Err(Error::invalid(
                "nothing to update: give name, description or avatar_url",
            ));
        }
        Ok(patch)
    }

    /// Applies a patch from [`checked_group_patch`](Self::checked_group_patch);
    /// the store checks at commit that the actor is still an admin.
    pub(super) async fn apply_group_patch(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        patch: GroupPatch,
    ) -> Result<ChatView> {
        // The note names the fields changed, not their values.
        let fields = [
            ("name", patch.name.is_some()),
            ("description", patch.description.is_some()),
            ("avatar_url", patch.avatar_url.is_some()),
        ];
        let note = fields
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(field, _)| *field)
            .collect::<Vec<_>>()
            .join(", ");
        let change = Change::UpdateGroup {
            chat_id,
            patch,
            by: actor.user_id.clone(),
            at: self.now(),
        };
        let view = self
            .chat_change(actor, change.authorized(&actor.user_id, Role::Admin))
            .await?;
        self.audit(
            actor,
            AuditAction::UpdateGroup,
            AuditTarget::Chat,
            chat_id,
            Some(chat_id),
            Some(note),
        )
        .await;
        Ok(view)
    }

    /// Applies a change of the chat itself (group update, retention)
    /// through the chat's lane; the chat after it, as the actor sees it.
    pub(super) async fn chat_change(&self, actor: &Actor, change: Change) -> Result<ChatView> {
        match self.membership(change).await? {
            crate::store::Applied::Membership { chat, .. } => self.view(chat, &actor.user_id).await,
            _ => Err(unexpected()),
        }
    }

    /// Refuses to put `user` into one more group once they are in
    /// `max_groups_per_user`. Checked before the change is queued, so two
    /// additions racing may pass it together: the cap bounds what one user
    /// can be made to receive, and a few over it do no harm.
    pub(super) async fn room_for_group(&self, user: &UserId) -> Result<()> {
        let max = self.inner.config.max_groups_per_user;
        if self.inner.store.group_count(user).await? >= max as u64 {
            return Err(Error::conflict(format!(
                "{user} is in {max} groups already, the most one user may join"
            )));
        }
        Ok(())
    }

    pub(super) async fn may_add(&self, actor: &UserId, member: &UserId) -> Result<()> {
        if !self.inner.policy.may_add_to_group(actor, member).await?
            || self.inner.store.is_blocked_either(actor, member).await?
        {
            return Err(Error::forbidden(format!(
                "you may not add {member} to a group"
            )));
        }
        Ok(())
    }
}
