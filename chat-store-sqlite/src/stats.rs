//! [`Store::stats`](chat_core::Store::stats): the analytics counts, in a
//! handful of aggregate queries over one read snapshot.
//!
//! Messages have no index on `created_at` (every post would maintain it),
//! so the queries scan the messages table; the engine bounds a request to
//! a year of days, and it is an admin's occasional query.

use chat_core::store::{DAY_MS, DayCounts, StatsRows, WeekCounts, rows::unsigned, week_of_day};
use rusqlite::{Connection, params};

use crate::Error;

/// Counted messages: everything but system messages and MLS commits
/// ([`chat_core::store::counted_kind`]).
macro_rules! counted {
    ($alias:literal) => {
        concat!($alias, ".kind NOT IN ('system', 'mls_commit')")
    };
}

/// Counted messages of the period `[?1, ?2)` (milliseconds), as
/// `(day, user)`, and sessions of the days `?3..=?4`: the active users.
const ACTIVE: &str = concat!(
    "SELECT m.created_at / 86400000 AS day, m.sender_id AS user FROM messages m \
     WHERE m.created_at >= ?1 AND m.created_at < ?2 AND ",
    counted!("m"),
    " UNION SELECT day, user_id FROM daily_sessions WHERE day >= ?3 AND day <= ?4"
);

/// The distinct users of [`ACTIVE`] over the whole period.
const ACTIVE_USERS: &str = concat!(
    "SELECT COUNT(*) FROM (SELECT m.sender_id FROM messages m \
     WHERE m.created_at >= ?1 AND m.created_at < ?2 AND ",
    counted!("m"),
    " UNION SELECT user_id FROM daily_sessions WHERE day >= ?3 AND day <= ?4)"
);

/// For each direct chat created before `?2` whose first counted message
/// falls in `[?1, ?2)`: that message's time and the time of the first
/// counted message of someone else after it (`NULL`: none yet). Both
/// lookups walk the chat's log on its `(chat_id, seq)` index.
const FIRST_REPLIES: &str = concat!(
    "SELECT f.created_at, (SELECT r.created_at FROM messages r \
       WHERE r.chat_id = f.chat_id AND r.seq > f.seq AND r.sender_id <> f.sender_id AND ",
    counted!("r"),
    " ORDER BY r.seq LIMIT 1) \
     FROM chats c JOIN messages f ON f.chat_id = c.id AND f.seq = (SELECT s.seq FROM messages s \
       WHERE s.chat_id = c.id AND ",
    counted!("s"),
    " ORDER BY s.seq LIMIT 1) \
     WHERE c.kind = 'direct' AND c.created_at < ?2 AND f.created_at >= ?1 AND f.created_at < ?2"
);

/// Per week up to `?3`: chats with a counted message in `[?1, ?2)` that
/// week, and of those the ones with one the week after.
const WEEKS: &str = concat!(
    "WITH a AS (SELECT DISTINCT m.chat_id, (m.created_at / 86400000 + 3) / 7 AS week \
       FROM messages m WHERE m.created_at >= ?1 AND m.created_at < ?2 AND ",
    counted!("m"),
    ") SELECT a.week, COUNT(*), COUNT(b.chat_id) FROM a \
     LEFT JOIN a AS b ON b.chat_id = a.chat_id AND b.week = a.week + 1 \
     WHERE a.week <= ?3 GROUP BY a.week ORDER BY a.week"
);

fn count(name: &'static str, n: i64) -> Result<u64, Error> {
    Ok(unsigned(name, n)?)
}

/// [`Store::stats`](chat_core::Store::stats) of UTC days `from..=to`.
pub(crate) fn stats(conn: &Connection, from: i64, to: i64) -> Result<StatsRows, Error> {
    // Readers run each call in one read transaction: every query below
    // sees the same snapshot.
    let tx = conn;
    let (start, end) = (from * DAY_MS, (to + 1) * DAY_MS);
    let mut rows = StatsRows::default();

    let mut days: std::collections::BTreeMap<i64, DayCounts> = Default::default();
    {
        let mut per_day = |sql: &str,
                           args: &[&dyn rusqlite::ToSql],
                           set: fn(&mut DayCounts, u64)|
         -> Result<(), Error> {
            let mut statement = tx.prepare_cached(sql)?;
            let mut found = statement.query(args)?;
            while let Some(r) = found.next()? {
                let (d, n): (i64, i64) = (r.get(0)?, r.get(1)?);
                let entry = days.entry(d).or_insert(DayCounts {
                    day: d,
                    ..DayCounts::default()
                });
                set(entry, count("stats count", n)?);
            }
            Ok(())
        };
        per_day(
            concat!(
                "SELECT m.created_at / 86400000 AS day, COUNT(*) FROM messages m \
                 WHERE m.created_at >= ?1 AND m.created_at < ?2 AND ",
                counted!("m"),
                " GROUP BY day"
            ),
            params![start, end],
            |d, n| d.messages = n,
        )?;
        per_day(
            &format!("SELECT day, COUNT(*) FROM ({ACTIVE}) GROUP BY day"),
            params![start, end, from, to],
            |d, n| d.active_users = n,
        )?;
        per_day(
            "SELECT created_at / 86400000 AS day, COUNT(*) FROM chats \
             WHERE created_at >= ?1 AND created_at < ?2 GROUP BY day",
            params![start, end],
            |d, n| d.new_chats = n,
        )?;
    }
    rows.days = days.into_values().collect();

    rows.active_users = count(
        "active users",
        tx.prepare_cached(ACTIVE_USERS)?
            .query_row(params![start, end, from, to], |r| r.get(0))?,
    )?;
    rows.sessions = count(
        "sessions",
        tx.prepare_cached(
            "SELECT COALESCE(SUM(sessions), 0) FROM daily_sessions WHERE day >= ?1 AND day <= ?2",
        )?
        .query_row(params![from, to], |r| r.get(0))?,
    )?;
    let (messages, delivered, read): (i64, i64, i64) = tx
        .prepare_cached(concat!(
            "SELECT COUNT(*), COALESCE(SUM(r.delivered_at - m.created_at <= 1000), 0), \
               COALESCE(SUM(r.read_at - m.created_at <= 86400000), 0) \
             FROM messages m LEFT JOIN receipt_times r ON r.chat_id = m.chat_id AND r.seq = m.seq \
             WHERE m.created_at >= ?1 AND m.created_at < ?2 AND ",
            counted!("m")
        ))?
        .query_row(params![start, end], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    rows.messages = count("messages", messages)?;
    rows.delivered_within_1s = count("delivered", delivered)?;
    rows.read_within_24h = count("read", read)?;

    let mut statement = tx.prepare_cached(FIRST_REPLIES)?;
    let mut found = statement.query(params![start, end])?;
    while let Some(r) = found.next()? {
        let (first, reply): (i64, Option<i64>) = (r.get(0)?, r.get(1)?);
        match reply {
            // Clocks of two nodes may disagree: a reply is never negative.
            Some(reply) => rows
                .first_replies_ms
                .push(u64::try_from(reply - first).unwrap_or(0)),
            None => rows.unanswered += 1,
        }
    }
    drop(found);
    drop(statement);

    let (first_week, last_week) = (week_of_day(from), week_of_day(to));
    let week_start = |w: i64| (w * 7 - 3) * DAY_MS;
    let mut statement = tx.prepare_cached(WEEKS)?;
    let mut found = statement.query(params![
        week_start(first_week),
        week_start(last_week + 2),
        last_week
    ])?;
    while let Some(r) = found.next()? {
        let (week, active, retained): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        rows.weeks.push(WeekCounts {
            week,
            active_chats: count("active chats", active)?,
            retained: count("retained", retained)?,
        });
    }
    Ok(rows)
}
