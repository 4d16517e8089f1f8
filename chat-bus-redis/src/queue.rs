//! The publish queue: the remote half of [`Bus::publish`](chat_core::Bus::publish),
//! kept in order and bounded, for the bus's drain task to send to Redis.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use chat_core::{
    UserId,
    bus::{Action, Delivery},
};
use tokio::sync::Notify;

/// Counters of a [`RedisBus`](crate::RedisBus)'s publish queue (see the
/// [crate docs](crate#publishing-without-waiting-for-redis)), from
/// [`RedisBus::publish_stats`](crate::RedisBus::publish_stats): export them
/// as metrics.
///
/// The counters count deliveries that had an audience on other nodes to
/// route to; deliveries for this node alone never enter the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishStats {
    /// Deliveries queued or being sent to Redis now.
    pub pending: usize,
    /// Their estimated size, against
    /// [`publish_queue_bytes`](crate::RedisBusConfig::publish_queue_bytes).
    pub pending_bytes: usize,
    /// Deliveries Redis routed to the other nodes concerned (total).
    pub sent: u64,
    /// Deliveries not sent to other nodes because the queue was full, or
    /// still queued when [`RedisBus::shutdown`](crate::RedisBus::shutdown)
    /// stopped waiting (total). Their clients on other nodes catch up with
    /// `sync`.
    pub dropped: u64,
    /// Deliveries Redis failed to route (unreachable, timed out, script
    /// error) (total). Their clients on other nodes catch up with `sync`.
    pub failed: u64,
}

/// One delivery waiting for Redis, and what it counts against the limit.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) delivery: Delivery,
    cost: usize,
}

/// What [`PublishQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; `after_drops` deliveries had been dropped just before it
    /// (the queue has room again).
    Queued { after_drops: u64 },
    /// The queue is full: dropped. `first` if the previous push was queued
    /// (a run of drops starts).
    Dropped { first: bool },
    /// The queue is closed (the bus left the cluster): not queued.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Cost of the queued jobs and of the batch being sent.
    bytes: usize,
    /// Jobs of the batch being sent.
    sending: usize,
    /// Deliveries dropped since the last one queued.
    dropping: u64,
    closed: bool,
}

/// A FIFO of deliveries bounded by their estimated size, for one consumer.
#[derive(Debug)]
pub(crate) struct PublishQueue {
    state: Mutex<State>,
    limit: usize,
    /// Wakes the consumer: jobs arrived.
    work: Notify,
    /// Wakes [`PublishQueue::flush`]: a batch finished.
    progress: Notify,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl PublishQueue {
    /// A queue of at most `limit` bytes of deliveries (as [`cost`] counts
    /// them; a single delivery larger than that is queued when the queue is
    /// empty).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limit,
            work: Notify::new(),
            progress: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `delivery` behind every delivery queued before, unless the
    /// queue is full or closed. Never waits.
    pub(crate) fn push(&self, delivery: Delivery) -> Pushed {
        let cost = cost(&delivery);
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        if state.bytes > 0 && state.bytes.saturating_add(cost) > self.limit {
            state.dropping += 1;
            let first = state.dropping == 1;
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Pushed::Dropped { first };
        }
        let after_drops = std::mem::take(&mut state.dropping);
        state.bytes += cost;
        state.jobs.push_back(Job { delivery, cost });
        drop(state);
        self.work.notify_one();
        Pushed::Queued { after_drops }
    }

    /// Waits for jobs, then takes the oldest ones: at most `max_jobs`, and
    /// no more than `max_bytes` of cost unless that is the first job. They
    /// count as pending until [`PublishQueue::finished`]. One consumer
    /// only.
    pub(crate) async fn next_batch(&self, max_jobs: usize, max_bytes: usize) -> Vec<Job> {
        loop {
            {
                let mut state = self.lock();
                if !state.jobs.is_empty() {
                    let mut batch = Vec::with_capacity(state.jobs.len().min(max_jobs));
                    let mut bytes = 0;
                    while let Some(job) = state.jobs.front() {
                        if batch.len() == max_jobs
                            || (!batch.is_empty() && bytes + job.cost > max_bytes)
                        {
                            break;
                        }
                        bytes += job.cost;
                        batch.extend(state.jobs.pop_front());
                    }
                    state.sending = batch.len();
                    return batch;
                }
            }
            // A push between the check and here leaves a permit: no wake-up
            // is lost.
            self.work.notified().await;
        }
    }

    /// The batch taken by the last [`PublishQueue::next_batch`] was sent:
    /// `sent` of its deliveries went through, `failed` did not.
    pub(crate) fn finished(&self, batch: Vec<Job>, sent: u64, failed: u64) {
        let cost: usize = batch.iter().map(|j| j.cost).sum();
        drop(batch);
        {
            let mut state = self.lock();
            state.bytes = state.bytes.saturating_sub(cost);
            state.sending = 0;
        }
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    /// Accepts nothing more: later pushes return [`Pushed::Closed`].
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    /// Waits until every delivery queued so far has been sent (or failed).
    pub(crate) async fn flush(&self) {
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            // Register before checking, so that a batch finishing in
            // between wakes this waiter.
            progress.as_mut().enable();
            {
                let state = self.lock();
                if state.jobs.is_empty() && state.sending == 0 {
                    return;
                }
            }
            progress.await;
        }
    }

    /// Empties the queue, counting what it held as dropped; returns how
    /// many deliveries that was.
    pub(crate) fn abandon(&self) -> usize {
        let jobs = {
            let mut state = self.lock();
            let jobs = std::mem::take(&mut state.jobs);
            let cost: usize = jobs.iter().map(|j| j.cost).sum();
            state.bytes = state.bytes.saturating_sub(cost);
            jobs
        };
        self.dropped.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        jobs.len()
    }

    pub(crate) fn stats(&self) -> PublishStats {
        let (pending, pending_bytes) = {
            let state = self.lock();
            (state.jobs.len() + state.sending, state.bytes)
        };
        PublishStats {
            pending,
            pending_bytes,
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What a queued delivery holds on to, roughly: the delivery itself, its
/// event or reason, and its audience (the event and the audience are
/// usually shared with the hub and the engine, so this overestimates).
fn cost(delivery: &Delivery) -> usize {
    let action = match &delivery.action {
        Action::Event(event) => event.frame().len(),
        Action::Disconnect { reason, .. } => reason.len(),
        _ => 0,
    };
    let users: usize = delivery
        .audience
        .users
        .iter()
        .map(|u| size_of::<UserId>() + u.as_str().len())
        .sum();
    size_of::<Job>() + action + users
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use chat_core::{bus::Audience, event::Event};

    use super::*;

    fn delivery(text: &str) -> Delivery {
        let users: Vec<UserId> = ["alice", "bob"]
            .iter()
            .filter_map(|u| UserId::new(*u).ok())
            .collect();
        Delivery {
            audience: Audience::users(users),
            action: Action::Event(
                Event::from_frame(Bytes::from(format!(r#"{{"type":"test","data":"{text}"}}"#)))
                    .expect("an event frame"),
            ),
        }
    }

    fn texts(batch: &[Job]) -> Vec<String> {
        batch
            .iter()
            .map(|j| match &j.delivery.action {
                Action::Event(e) => String::from_utf8_lossy(&e.data())
                    .trim_matches('"')
                    .to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn keeps_order_and_batches() {
        let q = PublishQueue::new(1 << 20);
        for i in 0..5 {
            assert_eq!(
                q.push(delivery(&format!("m{i}"))),
                Pushed::Queued { after_drops: 0 }
            );
        }
        let batch = q.next_batch(3, usize::MAX).await;
        assert_eq!(texts(&batch), ["m0", "m1", "m2"]);
        assert_eq!(q.stats().pending, 5);
        q.finished(batch, 3, 0);
        let batch = q.next_batch(3, usize::MAX).await;
        assert_eq!(texts(&batch), ["m3", "m4"]);
        q.finished(batch, 1, 1);
        let stats = q.stats();
        assert_eq!((stats.pending, stats.pending_bytes), (0, 0));
        assert_eq!((stats.sent, stats.failed, stats.dropped), (4, 1, 0));
    }

    #[tokio::test]
    async fn batch_bytes_bound_the_batch_but_never_empty_it() {
        let q = PublishQueue::new(1 << 20);
        let one = cost(&delivery("m0"));
        for i in 0..4 {
            q.push(delivery(&format!("m{i}")));
        }
        let batch = q.next_batch(100, one * 2).await;
        assert_eq!(texts(&batch), ["m0", "m1"]);
        q.finished(batch, 2, 0);
        let batch = q.next_batch(100, 1).await;
        assert_eq!(
            texts(&batch),
            ["m2"],
            "the first job goes whatever its size"
        );
        q.finished(batch, 1, 0);
    }

    #[tokio::test]
    async fn full_queue_drops_newest_and_says_when_it_has_room_again() {
        let one = cost(&delivery("m0"));
        let q = PublishQueue::new(one * 2);
        assert!(matches!(q.push(delivery("m0")), Pushed::Queued { .. }));
        assert!(matches!(q.push(delivery("m1")), Pushed::Queued { .. }));
        assert_eq!(q.push(delivery("m2")), Pushed::Dropped { first: true });
        assert_eq!(q.push(delivery("m3")), Pushed::Dropped { first: false });
        assert_eq!(q.stats().dropped, 2);
        // What is being sent still counts against the limit.
        let batch = q.next_batch(1, usize::MAX).await;
        assert_eq!(q.push(delivery("m4")), Pushed::Dropped { first: false });
        q.finished(batch, 1, 0);
        assert_eq!(
            q.push(delivery("m5")),
            Pushed::Queued { after_drops: 3 },
            "room again after three drops"
        );
        let batch = q.next_batch(10, usize::MAX).await;
        assert_eq!(texts(&batch), ["m1", "m5"], "order kept, dropped ones gone");
        q.finished(batch, 2, 0);
    }

    #[tokio::test]
    async fn oversized_delivery_goes_through_an_empty_queue() {
        let q = PublishQueue::new(1);
        assert!(matches!(q.push(delivery("big")), Pushed::Queued { .. }));
        assert_eq!(q.push(delivery("next")), Pushed::Dropped { first: true });
    }

    #[tokio::test]
    async fn flush_waits_for_the_batch_in_flight_and_close_refuses() {
        let q = Arc::new(PublishQueue::new(1 << 20));
        q.push(delivery("m0"));
        q.push(delivery("m1"));
        let consumer = q.clone();
        let drain = tokio::spawn(async move {
            loop {
                let batch = consumer.next_batch(1, usize::MAX).await;
                tokio::task::yield_now().await;
                let n = batch.len() as u64;
                consumer.finished(batch, n, 0);
            }
        });
        q.close();
        assert_eq!(q.push(delivery("late")), Pushed::Closed);
        q.flush().await;
        let stats = q.stats();
        assert_eq!((stats.pending, stats.sent), (0, 2));
        drain.abort();
    }

    #[tokio::test]
    async fn abandon_counts_what_was_left() {
        let q = PublishQueue::new(1 << 20);
        q.push(delivery("m0"));
        q.push(delivery("m1"));
        assert_eq!(q.abandon(), 2);
        let stats = q.stats();
        assert_eq!(
            (stats.pending, stats.pending_bytes, stats.dropped),
            (0, 0, 2)
        );
    }
}
