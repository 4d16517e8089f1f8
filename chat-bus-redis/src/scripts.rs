//! The Lua scripts: every presence change and every routed publish is one
//! atomic script, so that two nodes never interleave inside one decision.
//!
//! Deadlines are in milliseconds of the Redis server's clock (`TIME`), so
//! node clocks never have to agree. A node is *live* while its score in the
//! `nodes` sorted set is in the future.
//!
//! Scripts build the keys of other nodes and users from prefixes passed in
//! `ARGV`, so they need a standalone Redis (or Sentinel), not Redis Cluster.

use fred::{bytes_utils::Str, types::scripts::Script};

/// Helpers shared by every script.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(nodes, node, now)
  local s = redis.call('ZSCORE', nodes, node)
  return s ~= false and s ~= nil and tonumber(s) > now
end
local function online_anywhere(nodes, user_key, now)
  for _, n in ipairs(redis.call('SMEMBERS', user_key)) do
    if live(nodes, n, now) then return true end
  end
  return false
end
"#;

/// `user_connected`.
///
/// KEYS: nodes, this node's users, the user's nodes.
/// ARGV: this node, user.
/// Returns `{online on another live node (0/1), this node is live (0/1)}`.
const CONNECTED: &str = r#"
local now = now_ms()
local nodes, mine, user_key = KEYS[1], KEYS[2], KEYS[3]
local me, user = ARGV[1], ARGV[2]
local elsewhere = 0
for _, n in ipairs(redis.call('SMEMBERS', user_key)) do
  if n ~= me and live(nodes, n, now) then
    elsewhere = 1
    break
  end
end
redis.call('SADD', mine, user)
redis.call('SADD', user_key, me)
return {elsewhere, live(nodes, me, now) and 1 or 0}
"#;

/// `user_disconnected`. Dead or unknown nodes still listed for the user are
/// pruned here: the caller announces this user's offline transition, so a
/// later sweep of those nodes must not announce it again.
///
/// KEYS: nodes, this node's users, the user's nodes.
/// ARGV: this node, user, node key prefix.
/// Returns `{online on another live node (0/1), this node is live (0/1)}`.
const DISCONNECTED: &str = r#"
local now = now_ms()
local nodes, mine, user_key = KEYS[1], KEYS[2], KEYS[3]
local me, user, node_prefix = ARGV[1], ARGV[2], ARGV[3]
redis.call('SREM', mine, user)
redis.call('SREM', user_key, me)
local elsewhere = 0
for _, n in ipairs(redis.call('SMEMBERS', user_key)) do
  if live(nodes, n, now) then
    elsewhere = 1
  else
    redis.call('SREM', user_key, n)
    redis.call('SREM', node_prefix .. n, user)
  end
end
return {elsewhere, live(nodes, me, now) and 1 or 0}
"#;

/// `online`.
///
/// KEYS: nodes, then one user's nodes per user asked about.
/// Returns one 0/1 per user.
const ONLINE: &str = r#"
local now = now_ms()
local out = {}
for i = 2, #KEYS do
  out[#out + 1] = online_anywhere(KEYS[1], KEYS[i], now) and 1 or 0
end
return out
"#;

/// `publish`: one `PUBLISH` per other node holding an audience user.
///
/// KEYS: the nodes of each audience user.
/// ARGV: this node, channel prefix, payload.
/// Returns how many nodes it published to.
const PUBLISH: &str = r#"
local me, channel_prefix, payload = ARGV[1], ARGV[2], ARGV[3]
local sent = {}
local count = 0
for _, user_key in ipairs(KEYS) do
  for _, n in ipairs(redis.call('SMEMBERS', user_key)) do
    if n ~= me and not sent[n] then
      sent[n] = true
      redis.call('PUBLISH', channel_prefix .. n, payload)
      count = count + 1
    end
  end
end
return count
"#;

/// The heartbeat: extends this node's deadline; if asked, makes Redis hold
/// exactly this node's local users (after a reconnect or a lost state);
/// if asked, sweeps dead nodes; pings this node's own channel; and tells
/// when the next other node's deadline falls.
///
/// The sweep removes every expired node from `nodes` first and then takes
/// each of their users off; a user none of whose remaining nodes is live
/// went offline. Since one script removes a dead node, exactly one caller
/// cluster-wide reports its users.
///
/// KEYS: nodes, this node's users.
/// ARGV: this node, TTL ms, key expiry ms, sweep (0/1), node key prefix,
///       user key prefix, channel prefix, ping payload ('' for none),
///       sync (0/1), then this node's local users if sync.
/// Returns `{was lost or expired (0/1), ms until the next other node's
/// deadline (-1 if none), {users dropped by the sync and offline now},
/// {users of swept nodes, offline now}}`.
const BEAT: &str = r#"
local now = now_ms()
local nodes, mine = KEYS[1], KEYS[2]
local me, ttl, gc = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local sweep, node_prefix, user_prefix = ARGV[4] == '1', ARGV[5], ARGV[6]
local channel_prefix, ping, sync = ARGV[7], ARGV[8], ARGV[9] == '1'

local lost = live(nodes, me, now) and 0 or 1
redis.call('ZADD', nodes, now + ttl, me)
redis.call('PEXPIRE', nodes, gc)

local stale = {}
if sync then
  local want = {}
  for i = 10, #ARGV do want[ARGV[i]] = true end
  for _, u in ipairs(redis.call('SMEMBERS', mine)) do
    if not want[u] then
      redis.call('SREM', mine, u)
      redis.call('SREM', user_prefix .. u, me)
      if not online_anywhere(nodes, user_prefix .. u, now) then
        stale[#stale + 1] = u
      end
    end
  end
  for u in pairs(want) do
    redis.call('SADD', mine, u)
    redis.call('SADD', user_prefix .. u, me)
  end
end
redis.call('PEXPIRE', mine, gc)

local swept = {}
if sweep then
  local dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', now)
  local seen = {}
  for _, d in ipairs(dead) do redis.call('ZREM', nodes, d) end
  for _, d in ipairs(dead) do
    for _, u in ipairs(redis.call('SMEMBERS', node_prefix .. d)) do
      local user_key = user_prefix .. u
      if redis.call('SREM', user_key, d) == 1 and not seen[u]
        and not online_anywhere(nodes, user_key, now) then
        seen[u] = true
        swept[#swept + 1] = u
      end
    end
    redis.call('DEL', node_prefix .. d)
  end
end

if ping ~= '' then
  redis.call('PUBLISH', channel_prefix .. me, ping)
end

local wait = -1
local upcoming = redis.call('ZRANGEBYSCORE', nodes, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
for i = 1, #upcoming, 2 do
  if upcoming[i] ~= me then
    wait = tonumber(upcoming[i + 1]) - now
    break
  end
end
return {lost, wait, stale, swept}
"#;

/// Graceful leave: a node without users disappears; a node with users
/// expires now and wakes the live nodes, so that one of them sweeps it and
/// reports its users at once.
///
/// KEYS: nodes, this node's users.
/// ARGV: this node, channel prefix, wake-up payload.
const LEAVE: &str = r#"
local now = now_ms()
local nodes, mine = KEYS[1], KEYS[2]
local me, channel_prefix, wake = ARGV[1], ARGV[2], ARGV[3]
if redis.call('SCARD', mine) == 0 then
  redis.call('ZREM', nodes, me)
  return 0
end
redis.call('ZADD', nodes, 0, me)
for _, n in ipairs(redis.call('ZRANGEBYSCORE', nodes, '(' .. now, '+inf')) do
  redis.call('PUBLISH', channel_prefix .. n, wake)
end
return 1
"#;

/// One script: its source and its SHA-1, for `EVALSHA`.
///
/// fred's [`Script`] computes the SHA-1 (fred's `sha-1` feature). Both are
/// kept as fred's shared strings, which every `EVALSHA` and `SCRIPT LOAD`
/// takes without a copy.
#[derive(Debug)]
pub(crate) struct Lua {
    pub(crate) name: &'static str,
    pub(crate) source: Str,
    pub(crate) sha1: Str,
}

impl Lua {
    fn new(name: &'static str, body: &str) -> Self {
        let source = Str::from(format!("{PRELUDE}{body}"));
        let sha1 = Script::from_lua(source.clone()).sha1().clone();
        Self { name, source, sha1 }
    }
}

/// Every script of the bus.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) connected: Lua,
    pub(crate) disconnected: Lua,
    pub(crate) online: Lua,
    pub(crate) publish: Lua,
    pub(crate) beat: Lua,
    pub(crate) leave: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            connected: Lua::new("connected", CONNECTED),
            disconnected: Lua::new("disconnected", DISCONNECTED),
            online: Lua::new("online", ONLINE),
            publish: Lua::new("publish", PUBLISH),
            beat: Lua::new("beat", BEAT),
            leave: Lua::new("leave", LEAVE),
        }
    }
}
