//! Key epochs: when a sender's data key in a chat is replaced by a new one.

use std::{fmt, time::Duration};

use crate::model::Timestamp;

/// The number of one of a sender's successive data keys in a chat.
///
/// Epochs of a (chat, sender) pair count up from [`KeyEpoch::FIRST`]; old
/// epochs keep their data keys, so what they sealed still opens. Sealed
/// content carries its epoch in its header ([`sealed_epoch`](super::sealed_epoch)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyEpoch(u32);

impl KeyEpoch {
    /// The first epoch. It is 1, leaving 0 free for a store to mean "not
    /// encrypted" (rows written before encryption).
    pub const FIRST: KeyEpoch = KeyEpoch(1);

    /// An epoch from its stored number.
    pub fn new(n: u32) -> Self {
        Self(n)
    }

    /// The stored number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The epoch after this one; `None` after 2^32 - 1 epochs (at one
    /// epoch per message, more messages than one sender can send).
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Display for KeyEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for KeyEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyEpoch({})", self.0)
    }
}

/// When a sender's data key in a chat is retired for a new epoch: after
/// `max_messages` messages sealed under it, or once it is `max_age` old,
/// whichever comes first.
///
/// # Defaults: 10,000 messages or 7 days
///
/// - **Not a nonce limit.** With random 96-bit nonces NIST SP 800-38D
///   allows 2^32 messages under one key; 10,000 (about 2^13) leaves the
///   chance of a repeated nonce below 2^-70. Any bound below millions
///   would do for that.
/// - **Bounding a leak.** An unwrapped data key sits in the server's
///   memory (the key cache) while it is in use; one that leaks (a core
///   dump, a memory disclosure) opens at most one sender's messages in one
///   chat for one week, or 10,000 of them.
/// - **Cheap.** A new epoch costs one random key, one wrap and one 70-byte
///   row; reading history costs one unwrap per epoch crossed, cached.
///   A sender posting once a second rotates about every 3 hours; a quiet
///   chat weekly. Smaller bounds buy little: old epochs stay readable,
///   so rotation narrows what one key in memory exposes, not what the key
///   store exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPolicy {
    /// Messages sealed under one data key before the next one is made (0:
    /// a new epoch for every message).
    pub max_messages: u64,
    /// How long one data key is used for sealing (zero: a new epoch for
    /// every message).
    pub max_age: Duration,
}

impl EpochPolicy {
    /// The default [`EpochPolicy::max_messages`].
    pub const DEFAULT_MAX_MESSAGES: u64 = 10_000;
    /// The default [`EpochPolicy::max_age`]: 7 days.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

    /// Whether the next message must start a new epoch, given that the
    /// current epoch began at `started_at` and has sealed `sealed`
    /// messages. A clock that stepped back (`now` before `started_at`)
    /// counts as no time passed.
    pub fn is_due(&self, sealed: u64, started_at: Timestamp, now: Timestamp) -> bool {
        let age_ms = now.as_millis().saturating_sub(started_at.as_millis());
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        sealed >= self.max_messages || age >= self.max_age
    }
}

impl Default for EpochPolicy {
    fn default() -> Self {
        Self {
            max_messages: Self::DEFAULT_MAX_MESSAGES,
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }
}
