//! The delivery service of `e2ee` chats (MLS): the key package directory.
//! See [`crate::mls`].

use std::collections::HashSet;

use super::{Actor, ChatEngine};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    event::ServerEvent,
    mls::{
        ClaimedKeyPackage, KEY_PACKAGES_LOW, MAX_CLAIM_USERS, MAX_KEY_PACKAGE_BYTES,
        MAX_KEY_PACKAGES_PER_PUBLISH, MlsDelivery,
    },
    model::{DeviceId, UserId},
};

impl ChatEngine {
    fn mls(&self) -> Result<&dyn MlsDelivery> {
        self.inner.mls.as_deref().ok_or_else(|| {
            Error::invalid("end-to-end encrypted chats are not enabled on this server")
        })
    }

    /// `publish_key_packages`: adds key packages of the actor's `device`
    /// (and replaces its last-resort one); returns how many it now has, the
    /// last-resort one not counted. Each must be a valid key package whose
    /// credential names this user and this device: one that names anyone
    /// else is `forbidden` (a forged credential), and nothing is stored.
    pub async fn publish_key_packages(
        &self,
        actor: &Actor,
        device: &DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<u64> {
        let mls = self.mls()?;
        if packages.len() > MAX_KEY_PACKAGES_PER_PUBLISH {
            return Err(Error::invalid(format!(
                "at most {MAX_KEY_PACKAGES_PER_PUBLISH} key packages at once"
            )));
        }
        if packages.is_empty() && last_resort.is_none() {
            return Err(Error::invalid("no key packages"));
        }
        for package in packages.iter().chain(last_resort.as_ref()) {
            if package.len() > MAX_KEY_PACKAGE_BYTES {
                return Err(Error::invalid(format!(
                    "a key package is at most {MAX_KEY_PACKAGE_BYTES} bytes"
                )));
            }
            let info = mls.inspect_key_package(package)?;
            if info.user_id != actor.user_id || info.device_id != *device {
                return Err(Error::forbidden(
                    "a key package's credential must name your user and this device",
                ));
            }
        }
        self.inner
            .store
            .publish_key_packages(&actor.user_id, device, packages, last_resort, self.now())
            .await
    }

    /// `claim_key_packages`: one key package of each device of each of
    /// `users`, to add them to an e2ee chat; each is handed out once (the
    /// device's last-resort one when none is left). Only for users the actor
    /// may talk to: themselves (their other devices), anyone they share a
    /// chat with, or anyone they may open a direct chat with (the contact
    /// policy, and no block either way); anyone else is `forbidden`, so the
    /// directory cannot be drained by strangers. Devices left with fewer
    /// than [`KEY_PACKAGES_LOW`] get `key_packages_low`.
    pub async fn claim_key_packages(
        &self,
        actor: &Actor,
        users: &[UserId],
    ) -> Result<Vec<ClaimedKeyPackage>> {
        self.mls()?;
        if users.is_empty() || users.len() > MAX_CLAIM_USERS {
            return Err(Error::invalid(format!(
                "user_ids must name 1..={MAX_CLAIM_USERS} users"
            )));
        }
        let me = &actor.user_id;
        let mut co_members: Option<HashSet<UserId>> = None;
        for user in users {
            if user == me {
                continue;
            }
            let shared = match &co_members {
                Some(set) => set.contains(user),
                None => {
                    let set: HashSet<UserId> =
                        self.inner.store.co_members(me).await?.into_iter().collect();
                    co_members.insert(set).contains(user)
                }
            };
            let allowed = shared
                || (self.inner.policy.may_open_direct(me, user).await?
                    && !self.inner.store.is_blocked_either(me, user).await?);
            if !allowed {
                return Err(Error::forbidden(format!(
                    "you may not claim key packages of {user}"
                )));
            }
        }
        let claimed = self.inner.store.claim_key_packages(users).await?;
        for c in claimed.iter().filter(|c| c.remaining < KEY_PACKAGES_LOW) {
            let mut audience = Audience::users(vec![c.user_id.clone()]);
            audience.device = Some(c.device_id.clone());
            let event = ServerEvent::KeyPackagesLow {
                available: c.remaining,
            };
            self.publish(audience, Action::Event(event.encode())).await;
        }
        Ok(claimed)
    }
}
