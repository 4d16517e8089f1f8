//! Rate limits every transport enforces the same way: per-user token
//! buckets (governor), one per [`CommandClass`], and one for opening
//! connections.
//!
//! The [connection driver](crate::protocol::driver) takes a token before it
//! executes each command; the HTTP API takes one per request of the same
//! class.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use crate::{model::UserId, protocol::ClientCommand};
use governor::{
    Quota, RateLimiter, clock::Clock as _, clock::DefaultClock,
    state::keyed::DefaultKeyedStateStore,
};

/// A class of commands sharing one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// Commands that write: messages, edits, reactions, chats, reports.
    Write,
    /// Typing indicators.
    Typing,
    /// Everything else (reads, receipts, presence, ping).
    Other,
}

impl CommandClass {
    /// The class of a command.
    pub fn of(command: &ClientCommand) -> Self {
        use ClientCommand as C;
        match command {
            C::SendMessage(_)
            | C::EditMessage { .. }
            | C::DeleteMessage { .. }
            | C::React { .. }
            | C::Unreact { .. }
            | C::CreateDirect { .. }
            | C::CreateGroup(_)
            | C::AddParticipant { .. }
            | C::RemoveParticipant { .. }
            | C::UpdateGroup { .. }
            | C::SetRole { .. }
            | C::MuteParticipant { .. }
            | C::SetRetention { .. }
            | C::CreateCheckin(_)
            | C::AnswerCheckin { .. }
            | C::Report { .. }
            | C::BlockUser { .. }
            | C::UnblockUser { .. }
            // Claims use up other users' key packages: as scarce as writes.
            | C::PublishKeyPackages { .. }
            | C::ClaimKeyPackages { .. }
            | C::MlsCommit { .. } => CommandClass::Write,
            C::TypingStart { .. } | C::TypingStop { .. } => CommandClass::Typing,
            C::Authenticate { .. }
            | C::JoinChat { .. }
            | C::LeaveChat { .. }
            | C::MarkDelivered { .. }
            | C::MarkAsRead { .. }
            | C::UserOnline {}
            | C::UserOffline {}
            | C::CheckinResults { .. }
            | C::History { .. }
            | C::Sync { .. }
            | C::SetPrivacy(_)
            | C::Ping {} => CommandClass::Other,
        }
    }
}

/// A budget: `per_second` sustained, `burst` at once. `per_second == 0`
/// turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Rate {
    /// Sustained commands per second.
    pub per_second: u32,
    /// Commands allowed at once.
    pub burst: u32,
}

/// The budgets of each class, per user and node. A class left out when
/// deserializing keeps its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct RateLimits {
    /// Write commands.
    pub write: Rate,
    /// Typing indicators.
    pub typing: Rate,
    /// Everything else.
    pub other: Rate,
    /// Opening a connection (`/ws`, any transport). Each connect reads the
    /// store (suspension, the `presence_update` snapshot), so a client
    /// reconnecting in a tight loop is refused with `rate_limited`. The
    /// default burst (20) lets every device of a user (at most 16 by
    /// default) reconnect at once after a restart.
    pub connect: Rate,
    /// Bytes uploaded (media), counted as they arrive.
    pub upload: ByteRate,
}

/// A budget of bytes: `per_minute` sustained, `burst` at once.
/// `per_minute == 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ByteRate {
    /// Sustained bytes per minute.
    pub per_minute: u64,
    /// Bytes allowed at once (at least one largest upload).
    pub burst: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            write: Rate {
                per_second: 20,
                burst: 60,
            },
            typing: Rate {
                per_second: 5,
                burst: 10,
            },
            other: Rate {
                per_second: 50,
                burst: 200,
            },
            connect: Rate {
                per_second: 1,
                burst: 20,
            },
            upload: ByteRate {
                per_minute: 100 << 20,
                burst: 100 << 20,
            },
        }
    }
}

impl RateLimits {
    /// No limits (benchmarks, trusted embedders).
    pub fn unlimited() -> Self {
        let off = Rate {
            per_second: 0,
            burst: 0,
        };
        Self {
            write: off,
            typing: off,
            other: off,
            connect: off,
            upload: ByteRate {
                per_minute: 0,
                burst: 0,
            },
        }
    }
}

type Keyed = RateLimiter<UserId, DefaultKeyedStateStore<UserId>, DefaultClock>;

/// The token buckets of every user.
#[derive(Debug, Clone)]
pub struct Limiter {
    write: Option<Arc<Keyed>>,
    typing: Option<Arc<Keyed>>,
    other: Option<Arc<Keyed>>,
    connect: Option<Arc<Keyed>>,
    /// One cell per KiB uploaded.
    upload: Option<Arc<Keyed>>,
}

/// Upload budgets count KiB: governor's cells are `u32`.
const UPLOAD_CELL: u64 = 1024;

fn keyed_bytes(rate: ByteRate) -> Option<Arc<Keyed>> {
    let cells = |bytes: u64| u32::try_from(bytes.div_ceil(UPLOAD_CELL)).unwrap_or(u32::MAX);
    let per_minute = NonZeroU32::new(cells(rate.per_minute))?;
    let burst = NonZeroU32::new(cells(rate.burst)).unwrap_or(per_minute);
    let quota = Quota::per_minute(per_minute).allow_burst(burst);
    Some(Arc::new(RateLimiter::keyed(quota)))
}

fn keyed(rate: Rate) -> Option<Arc<Keyed>> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst.max(rate.per_second)).unwrap_or(per_second);
    Some(Arc::new(RateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    )))
}

/// Takes one token of `user`'s bucket in `limiter` (`None`: no limit).
fn take(limiter: Option<&Keyed>, user: &UserId) -> Result<(), Duration> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter
        .check_key(user)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

impl Limiter {
    /// Buckets for `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            write: keyed(limits.write),
            typing: keyed(limits.typing),
            other: keyed(limits.other),
            connect: keyed(limits.connect),
            upload: keyed_bytes(limits.upload),
        }
    }

    /// Takes `bytes` of `user`'s upload budget (rounded up to whole KiB);
    /// `Err(wait)` if they are not there. A chunk larger than the whole
    /// burst can never pass: it waits a minute, and the upload is refused.
    pub fn check_upload(&self, user: &UserId, bytes: u64) -> Result<(), Duration> {
        let Some(limiter) = self.upload.as_deref() else {
            return Ok(());
        };
        let cells = u32::try_from(bytes.div_ceil(UPLOAD_CELL)).unwrap_or(u32::MAX);
        let Some(cells) = NonZeroU32::new(cells) else {
            return Ok(());
        };
        match limiter.check_key_n(user, cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            Err(_insufficient) => Err(Duration::from_secs(60)),
        }
    }

    /// Takes one token of `user`'s budget for `class`; `Err(wait)` if empty.
    pub fn check(&self, user: &UserId, class: CommandClass) -> Result<(), Duration> {
        let limiter = match class {
            CommandClass::Write => &self.write,
            CommandClass::Typing => &self.typing,
            CommandClass::Other => &self.other,
        };
        take(limiter.as_deref(), user)
    }

    /// Takes one token of `user`'s budget for opening a connection;
    /// `Err(wait)` if empty.
    pub fn check_connect(&self, user: &UserId) -> Result<(), Duration> {
        take(self.connect.as_deref(), user)
    }

    /// Forgets buckets that are full again, so that memory follows the
    /// number of recently active users, not of all users ever seen.
    pub fn forget_idle(&self) {
        for limiter in [
            &self.write,
            &self.typing,
            &self.other,
            &self.connect,
            &self.upload,
        ]
        .into_iter()
        .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_past_the_burst() {
        let limits = RateLimits {
            write: Rate {
                per_second: 1,
                burst: 3,
            },
            ..RateLimits::unlimited()
        };
        let l = Limiter::new(limits);
        let u = UserId::new("u").unwrap();
        for _ in 0..3 {
            assert!(l.check(&u, CommandClass::Write).is_ok());
        }
        let wait = l.check(&u, CommandClass::Write).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(
            l.check(&UserId::new("v").unwrap(), CommandClass::Write)
                .is_ok(),
            "per user"
        );
        for _ in 0..100 {
            assert!(l.check(&u, CommandClass::Other).is_ok(), "unlimited class");
        }
        l.forget_idle();
    }

    #[test]
    fn connects_have_their_own_bucket() {
        let limits = RateLimits {
            connect: Rate {
                per_second: 1,
                burst: 2,
            },
            ..RateLimits::unlimited()
        };
        let l = Limiter::new(limits);
        let u = UserId::new("u").unwrap();
        assert!(l.check_connect(&u).is_ok());
        assert!(l.check_connect(&u).is_ok());
        let wait = l.check_connect(&u).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.check_connect(&UserId::new("v").unwrap()).is_ok());
        assert!(
            l.check(&u, CommandClass::Other).is_ok(),
            "commands unaffected"
        );
        let off = Limiter::new(RateLimits::unlimited());
        for _ in 0..100 {
            assert!(off.check_connect(&u).is_ok());
        }
    }

    #[test]
    fn uploads_spend_a_budget_of_bytes() {
        let limits = RateLimits {
            upload: ByteRate {
                per_minute: 1 << 20,
                burst: 1 << 20,
            },
            ..RateLimits::unlimited()
        };
        let l = Limiter::new(limits);
        let u = UserId::new("u").unwrap();
        for _ in 0..16 {
            assert!(l.check_upload(&u, 64 * 1024).is_ok());
        }
        let wait = l.check_upload(&u, 64 * 1024).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(60));
        assert!(l.check_upload(&UserId::new("v").unwrap(), 1 << 20).is_ok());
        assert!(
            l.check_upload(&UserId::new("w").unwrap(), 2 << 20).is_err(),
            "more than the burst at once"
        );
        assert!(
            Limiter::new(RateLimits::unlimited())
                .check_upload(&u, u64::MAX)
                .is_ok()
        );
    }

    #[test]
    fn classes_left_out_keep_their_defaults() {
        let limits: RateLimits =
            serde_json::from_str(r#"{"typing": {"per_second": 1, "burst": 2}}"#).unwrap();
        let defaults = RateLimits::default();
        assert_eq!(
            limits,
            RateLimits {
                typing: Rate {
                    per_second: 1,
                    burst: 2
                },
                ..defaults
            }
        );
        assert_eq!(defaults.connect.burst, 20);
    }
}
