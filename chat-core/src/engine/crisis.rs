//! Crisis escalation (PROTOCOL.md 5.3): a message or edit of an at-rest
//! chat whose text matches a configured phrase is flagged for admins (a
//! report filed by `system`, reason `crisis: <phrase>`), and, off the
//! send path, every connection of every responder on every node gets
//! `crisis_alert`, the host app's webhook gets it through the notifier,
//! and the sender's own connections get `support_resources`. Nothing of
//! it reaches other participants, and the message is delivered as any
//! other.
//!
//! Matching runs after the message is stored, before its ack: it costs
//! microseconds (see BENCHMARKS.md), while everything that waits on the
//! network goes to a task of its own. Retries of a stored message never
//! get here, so a message alerts once.
//!
//! Responders who are not connected get the open alerts when they
//! connect: the report queue is where alerts wait, so a responder sees
//! every crisis flag of the last day that no admin has closed yet.

use std::time::Duration;

use super::{ChatEngine, SYSTEM_REPORTER};
use crate::{
    bus::{Action, Audience},
    care::{CrisisAlert, CrisisConfig},
    event::ServerEvent,
    model::{Encryption, Message, ReportStatus, UserId},
    store::ReportQuery,
};

/// How a crisis flag's report reason starts.
const CRISIS_REASON: &str = "crisis: ";
/// How far back a connecting responder's open alerts go.
const PENDING_FOR: Duration = Duration::from_secs(24 * 3600);
/// Most open alerts a connecting responder is sent.
const PENDING_MAX: usize = 50;
/// How long the notifier may take with an alert.
const NOTIFIER_TIMEOUT: Duration = Duration::from_secs(30);

impl ChatEngine {
    /// The configured phrase `message` (just stored or edited, in a chat
    /// encrypted `encryption`) matches, if any: e2ee content and messages
    /// the engine wrote are never read.
    pub(super) fn crisis_match(&self, encryption: Encryption, message: &Message) -> Option<String> {
        let crisis = self.inner.crisis.as_deref()?;
        if encryption != Encryption::AtRest || message.kind.is_engine_written() {
            return None;
        }
        let text = message.content.as_deref()?;
        crisis.matcher.find(text).map(str::to_owned)
    }

    /// The report reason of a crisis flag for `phrase`, with a hook's
    /// reason after it, if a hook flagged the message too (one report per
    /// reporter and message).
    fn crisis_reason(phrase: &str, hook: Option<String>) -> String {
        match hook {
            Some(reason) => format!("{CRISIS_REASON}{phrase}; {reason}"),
            None => format!("{CRISIS_REASON}{phrase}"),
        }
    }

    /// Files the flag of `message`, which matched `phrase` (and which a
    /// hook flagged for `hook`, if any), and sends its alert, on a task of
    /// its own.
    pub(super) fn escalate(&self, message: &Message, phrase: String, hook: Option<String>) {
        let Some(crisis) = self.inner.crisis.clone() else {
            return;
        };
        metrics::counter!(crate::metrics::CRISIS_ALERTS).increment(1);
        tracing::warn!(
            chat = %message.chat_id, message = %message.id, matched = %phrase,
            "crisis phrase matched; alerting responders"
        );
        let reason = Self::crisis_reason(&phrase, hook);
        let alert = CrisisAlert {
            chat_id: message.chat_id,
            message_id: message.id,
            sender_id: message.sender_id.clone(),
            matched: phrase,
            at: message.edited_at.unwrap_or(message.created_at),
        };
        let (engine, message) = (self.clone(), message.clone());
        tokio::spawn(async move {
            // The flag first: a responder who connects later finds the
            // alert through it.
            engine.file_hook_report(&message, reason).await;
            engine.send_alert(&crisis, alert).await;
        });
    }

    async fn send_alert(&self, crisis: &CrisisConfig, alert: CrisisAlert) {
        let resources = ServerEvent::SupportResources {
            chat_id: alert.chat_id,
            message_id: alert.message_id,
            resources: crisis.resources.clone().into(),
        };
        let sender = Audience::users(vec![alert.sender_id.clone()]);
        self.publish(sender, Action::Event(resources.encode()))
            .await;
        if !crisis.responders.is_empty() {
            let event = ServerEvent::CrisisAlert(alert.clone()).encode();
            let responders = Audience::users(crisis.responders.clone());
            self.publish(responders, Action::Event(event)).await;
        }
        if let Some(notifier) = &self.inner.notifier {
            match tokio::time::timeout(NOTIFIER_TIMEOUT, notifier.crisis_alert(&alert)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "the notifier failed a crisis alert"),
                Err(_) => tracing::error!("the notifier timed out on a crisis alert"),
            }
        }
    }

    /// The open crisis alerts of the last day, newest last, for a
    /// responder who connects (`None` for anyone else).
    pub(super) async fn pending_alerts(&self, user: &UserId) -> Option<Vec<CrisisAlert>> {
        let crisis = self.inner.crisis.as_deref()?;
        if !crisis.responders.contains(user) {
            return None;
        }
        let since = self.now().as_millis() - PENDING_FOR.as_millis() as i64;
        let mut query = ReportQuery::new(PENDING_MAX);
        query.reporter = UserId::new(SYSTEM_REPORTER).ok();
        query.status = Some(ReportStatus::Open);
        // Report ids are time-ordered: start a day back.
        query.after = Some(crate::model::ReportId::from_ulid(ulid::Ulid::from_parts(
            u64::try_from(since).unwrap_or(0),
            0,
        )));
        let reports = match self.inner.store.list_reports(query).await {
            Ok(reports) => reports,
            Err(e) => {
                tracing::error!(error = %e, "could not read open crisis alerts");
                return None;
            }
        };
        Some(
            reports
                .into_iter()
                .filter_map(|r| {
                    let matched = r.reason.strip_prefix(CRISIS_REASON)?;
                    let matched = matched.split_once("; ").map_or(matched, |(m, _)| m);
                    Some(CrisisAlert {
                        chat_id: r.chat_id,
                        message_id: r.message_id,
                        sender_id: r.reported_user_id,
                        matched: matched.to_owned(),
                        at: r.created_at,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests;
