//! [`RedisBusConfig`].

use std::time::Duration;

use chat_core::{Error, Result};

/// Settings of a [`RedisBus`](crate::RedisBus).
///
/// ```
/// use std::time::Duration;
///
/// use chat_bus_redis::RedisBusConfig;
///
/// let config = RedisBusConfig::default()
///     .node_id("chat-1")
///     .key_prefix("staging:chat")
///     .presence_ttl(Duration::from_secs(15));
/// assert_eq!(config.heartbeat_interval(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisBusConfig {
    /// This node's id, unique in the cluster. Default: a random ULID, so a
    /// restarted process is a new node. A fixed id (e.g. the host name) is
    /// fine too: a node that finds state of a previous process with its id
    /// reports that process's users offline after [`attach`].
    ///
    /// [`attach`]: chat_core::Bus::attach
    pub node_id: String,
    /// Prefix of every key and channel of the bus (`<prefix>:nodes`, ...),
    /// so that several clusters (or tests) can share one Redis. Default:
    /// `chat:bus`.
    pub key_prefix: String,
    /// How long a node's presence outlives its last heartbeat; heartbeats
    /// come every third of it. The users of a node that dies go offline
    /// within this time. Default: 30 s.
    pub presence_ttl: Duration,
    /// How long [`RedisBus::connect`](crate::RedisBus::connect) waits for
    /// Redis before it returns a bus that serves local connections and
    /// keeps reconnecting in the background. Also the TCP connect timeout.
    /// Default: 5 s.
    pub connect_timeout: Duration,
    /// How long one Redis command (or one batch of publishes) may take
    /// before it fails. Presence calls wait at most this long;
    /// [`RedisBus::shutdown`](crate::RedisBus::shutdown) waits at most this
    /// long for the publish queue to drain. Default: 2 s.
    pub command_timeout: Duration,
    /// Bound of the publish queue: the deliveries that `publish` has handed
    /// to this node's connections and that wait for Redis to reach the
    /// other nodes, counted by the size of their events and audiences.
    /// When it is full, `publish` drops the remote part of new deliveries
    /// (and logs and counts it) rather than wait: see the
    /// [crate docs](crate#publishing-without-waiting-for-redis). Default:
    /// 16 MiB (tens of thousands of typical deliveries, seconds of a busy
    /// node's traffic).
    pub publish_queue_bytes: usize,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        Self {
            node_id: ulid::Ulid::new().to_string(),
            key_prefix: "chat:bus".to_owned(),
            presence_ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            publish_queue_bytes: 16 << 20,
        }
    }
}

impl RedisBusConfig {
    /// Shortest accepted [`presence_ttl`](Self::presence_ttl).
    pub const MIN_PRESENCE_TTL: Duration = Duration::from_millis(300);

    /// Sets [`node_id`](Self::node_id).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }

    /// Sets [`key_prefix`](Self::key_prefix).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets [`presence_ttl`](Self::presence_ttl).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`command_timeout`](Self::command_timeout).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets [`publish_queue_bytes`](Self::publish_queue_bytes).
    pub fn publish_queue_bytes(mut self, bytes: usize) -> Self {
        self.publish_queue_bytes = bytes;
        self
    }

    /// How often the node refreshes its presence: a third of the TTL.
    pub fn heartbeat_interval(&self) -> Duration {
        self.presence_ttl / 3
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let printable = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
        if !printable(&self.node_id) {
            return Err(Error::invalid(
                "RedisBusConfig::node_id must be non-empty printable ASCII without spaces",
            ));
        }
        if !printable(&self.key_prefix) {
            return Err(Error::invalid(
                "RedisBusConfig::key_prefix must be non-empty printable ASCII without spaces",
            ));
        }
        if self.presence_ttl < Self::MIN_PRESENCE_TTL {
            return Err(Error::invalid(format!(
                "RedisBusConfig::presence_ttl must be at least {:?}",
                Self::MIN_PRESENCE_TTL
            )));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::invalid(
                "RedisBusConfig timeouts must be greater than zero",
            ));
        }
        if self.publish_queue_bytes == 0 {
            return Err(Error::invalid(
                "RedisBusConfig::publish_queue_bytes must be greater than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_random_per_node() {
        let a = RedisBusConfig::default();
        let b = RedisBusConfig::default();
        assert!(a.validate().is_ok());
        assert_ne!(a.node_id, b.node_id);
        assert_eq!(a.presence_ttl, Duration::from_secs(30));
        assert_eq!(a.heartbeat_interval(), Duration::from_secs(10));
    }

    #[test]
    fn rejects_bad_values() {
        let base = RedisBusConfig::default;
        assert!(base().node_id("").validate().is_err());
        assert!(base().node_id("a b").validate().is_err());
        assert!(base().key_prefix("").validate().is_err());
        assert!(
            base()
                .presence_ttl(Duration::from_millis(10))
                .validate()
                .is_err()
        );
        assert!(base().command_timeout(Duration::ZERO).validate().is_err());
        assert!(base().publish_queue_bytes(0).validate().is_err());
    }
}
