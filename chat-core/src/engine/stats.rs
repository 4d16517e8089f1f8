//! Analytics (PROTOCOL.md 5.5): `GET /api/v1/admin/stats`, computed from
//! the store on demand. Counts only: nothing here names a user, a chat or
//! a message.

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::{Actor, ChatEngine};
use crate::{
    error::{Error, Result},
    store::{DayCounts, StatsRows, WeekCounts, week_of_day},
};

/// The longest period one stats request may cover, in days: the store
/// scans the period's messages, so a request's cost stays bounded.
pub const MAX_STATS_DAYS: i64 = 366;

/// The answer of `GET /api/v1/admin/stats` (PROTOCOL.md 5.5). Ratios are
/// `null` where their denominator is zero.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// First day, `YYYY-MM-DD` (UTC).
    pub from: String,
    /// Last day, inclusive.
    pub to: String,
    /// Every day of the period, in order.
    pub days: Vec<DayStats>,
    /// Counted messages of the period (every kind a person sends; not
    /// `system` or `mls_commit`).
    pub messages: u64,
    /// Distinct users who connected or sent a message in the period.
    pub active_users: u64,
    /// Authenticated connections opened in the period.
    pub sessions: u64,
    /// `messages / active_users`.
    pub messages_per_active_user: Option<f64>,
    /// `messages / sessions`.
    pub messages_per_session: Option<f64>,
    /// Time to first reply in direct chats.
    pub first_reply_secs: FirstReply,
    /// Share of the period's messages whose first receipt by another
    /// member came within 1 s.
    pub delivered_within_1s: Option<f64>,
    /// Share of the period's messages another member read within 24 h.
    pub read_within_24h: Option<f64>,
    /// Every ISO week that has a day in the period, in order.
    pub weekly_retention: Vec<WeekStats>,
}

/// One day of [`Stats::days`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayStats {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Counted messages created that day.
    pub messages: u64,
    /// Distinct users who connected or sent a message that day.
    pub active_users: u64,
    /// Chats created that day.
    pub new_chats: u64,
}

/// Time to first reply in direct chats: from a direct chat's first message
/// (in the period) to the other participant's first message. Nearest-rank
/// percentiles, in seconds; `null` when no chat got a reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirstReply {
    /// The lower median.
    pub median: Option<f64>,
    /// The 95th percentile.
    pub p95: Option<f64>,
    /// Direct chats counted (those that got a reply).
    pub answered: u64,
    /// Direct chats whose first message is in the period, still without a
    /// reply.
    pub unanswered: u64,
}

/// One week of [`Stats::weekly_retention`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeekStats {
    /// ISO week, `"2026-W48"`.
    pub week: String,
    /// Chats with a message in the week.
    pub active_chats: u64,
    /// Of those, chats with a message the week after.
    pub retained: u64,
}

impl ChatEngine {
    /// The analytics of UTC days `from..=to` (`YYYY-MM-DD`, at most
    /// [`MAX_STATS_DAYS`]; `to` defaults to today, `from` to six days
    /// before `to`: a week); admins only.
    pub async fn stats(
        &self,
        actor: &Actor,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Stats> {
        Self::require_admin(actor)?;
        let to_day = match to {
            Some(to) => parse_day(to, "to")?,
            None => self.now().as_millis().div_euclid(crate::store::DAY_MS),
        };
        let from_day = match from {
            Some(from) => parse_day(from, "from")?,
            None => (to_day - 6).max(0),
        };
        if to_day < from_day {
            return Err(Error::invalid("to must not be before from"));
        }
        if to_day - from_day >= MAX_STATS_DAYS {
            return Err(Error::invalid(format!(
                "a stats period covers at most {MAX_STATS_DAYS} days"
            )));
        }
        let rows = self.inner.store.stats(from_day, to_day).await?;
        Ok(Stats::from_rows(from_day, to_day, rows))
    }
}

impl Stats {
    /// Fills in the days and weeks the store left out and computes the
    /// ratios and percentiles.
    fn from_rows(from: i64, to: i64, rows: StatsRows) -> Self {
        let mut counted = rows.days.iter().peekable();
        let days = (from..=to)
            .map(|day| {
                let c = counted
                    .next_if(|c| c.day == day)
                    .copied()
                    .unwrap_or(DayCounts {
                        day,
                        ..DayCounts::default()
                    });
                DayStats {
                    date: date_of(day).to_string(),
                    messages: c.messages,
                    active_users: c.active_users,
                    new_chats: c.new_chats,
                }
            })
            .collect();
        let mut weeks = rows.weeks.iter().peekable();
        let weekly_retention = (week_of_day(from)..=week_of_day(to))
            .map(|week| {
                let c = weeks
                    .next_if(|c| c.week == week)
                    .copied()
                    .unwrap_or(WeekCounts {
                        week,
                        ..WeekCounts::default()
                    });
                WeekStats {
                    week: iso_week(week),
                    active_chats: c.active_chats,
                    retained: c.retained,
                }
            })
            .collect();
        let mut replies = rows.first_replies_ms;
        replies.sort_unstable();
        let ratio = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
        Stats {
            from: date_of(from).to_string(),
            to: date_of(to).to_string(),
            days,
            messages: rows.messages,
            active_users: rows.active_users,
            sessions: rows.sessions,
            messages_per_active_user: ratio(rows.messages, rows.active_users),
            messages_per_session: ratio(rows.messages, rows.sessions),
            first_reply_secs: FirstReply {
                median: percentile(&replies, 50),
                p95: percentile(&replies, 95),
                answered: replies.len() as u64,
                unanswered: rows.unanswered,
            },
            delivered_within_1s: ratio(rows.delivered_within_1s, rows.messages),
            read_within_24h: ratio(rows.read_within_24h, rows.messages),
            weekly_retention,
        }
    }
}

/// The nearest-rank `p`th percentile of sorted milliseconds, in seconds:
/// the smallest value at least `p`% of the values are at or below.
fn percentile(sorted_ms: &[u64], p: usize) -> Option<f64> {
    let rank = (sorted_ms.len() * p).div_ceil(100).max(1);
    sorted_ms.get(rank - 1).map(|ms| *ms as f64 / 1000.0)
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` query parameter.
fn parse_day(s: &str, name: &str) -> Result<i64> {
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|d| d.year() >= 1970 && s.len() == 10)
        .ok_or_else(|| Error::invalid(format!("{name} must be a date YYYY-MM-DD from 1970 on")))?;
    Ok((date - epoch()).num_days())
}

fn date_of(day: i64) -> NaiveDate {
    epoch() + chrono::Days::new(u64::try_from(day).unwrap_or(0))
}

/// The ISO name of a [`week_of_day`]: its Monday's ISO year and week.
fn iso_week(week: i64) -> String {
    let monday = date_of(week * 7 - 3);
    let w = monday.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

#[cfg(test)]
mod tests;
