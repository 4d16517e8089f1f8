//! Signed POSTs to the host application's webhook (PROTOCOL.md 5.4), off
//! every request path.
//!
//! [`WebhookSender::post`] queues a JSON body and returns at once; a worker
//! task sends it with `X-Chat-Signature: sha256=<hex>` (HMAC-SHA256 of the
//! exact body bytes under the shared secret) and `X-Chat-Delivery` (an id
//! fixed when the body was queued and the same on every retry, so that the
//! receiver can drop duplicates: delivery is at least once). Non-2xx
//! answers, timeouts and connection errors are retried with exponential
//! backoff and jitter ([`Retry`]) until an attempt or age limit.
//!
//! Memory is bounded whatever the webhook does: the queue holds at most
//! `queue_capacity` deliveries, and when it is full the oldest one is
//! dropped (and counted), since a push is worth less the older it is. At
//! most [`MAX_IN_FLIGHT`] POSTs are in flight at once, so a webhook that
//! hangs costs a bounded number of sockets and never slows a send.
//!
//! Push notifications are its first user. Crisis alerts and mood signals
//! are meant to go through the same code with the same signing: each kind
//! gets its own sender (a queue, a worker and [`Metrics`] names) over one
//! [`WebhookConfig`], so that a flood of one kind cannot push the other out
//! of the queue.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use reqwest::{Url, header::CONTENT_TYPE};
use sha2::Sha256;
use tokio::{
    sync::{Notify, Semaphore},
    time::Instant,
};
use zeroize::Zeroizing;

/// The header carrying `sha256=<lowercase hex HMAC-SHA256 of the body>`.
pub(crate) const SIGNATURE_HEADER: &str = "X-Chat-Signature";
/// The header carrying the delivery's id, the same on every retry.
pub(crate) const DELIVERY_HEADER: &str = "X-Chat-Delivery";

/// Most POSTs of one sender in flight at once: a webhook that hangs holds
/// at most this many sockets until the request timeout.
const MAX_IN_FLIGHT: usize = 16;

/// Most bytes of an answer read before the connection is given up: the
/// answer means nothing to us, but reading a short one to its end lets the
/// connection be reused.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret: never printed (its `Debug` says `<redacted>`), and
/// wiped from memory when the last copy is dropped.
#[derive(Clone)]
pub(crate) struct Secret(Arc<Zeroizing<Vec<u8>>>);

impl Secret {
    /// Takes `text` over without copying it.
    pub(crate) fn new(text: String) -> Self {
        Self(Arc::new(Zeroizing::new(text.into_bytes())))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// How failed deliveries are retried: `first` after the first failure,
/// doubling up to `max_delay`, each pause scaled by a random factor in
/// 0.5..=1 (so that deliveries that failed together do not come back
/// together); given up after `max_attempts` attempts, or when the next
/// attempt would come later than `max_age` after the body was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    pub(crate) first: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) max_age: Duration,
}

impl Default for Retry {
    /// 0.5 s, 1 s, 2 s ... 60 s: ten attempts over about three minutes.
    /// A push is stale after that; the app shows the messages when it next
    /// syncs anyway.
    fn default() -> Self {
        Self {
            first: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_attempts: 10,
            max_age: Duration::from_secs(15 * 60),
        }
    }
}

impl Retry {
    /// The pause after the `failures`-th failed attempt (from 1), for a
    /// random `unit` in 0..=1.
    fn delay(&self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let full = self
            .first
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        full.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
    }
}

/// A random number in 0..=1 for the jitter; 1 (no jitter) in the
/// unlikely case the system has no randomness to give.
fn jitter() -> f64 {
    getrandom::u32().map_or(1.0, |n| f64::from(n) / f64::from(u32::MAX))
}

/// Where and how to POST.
#[derive(Debug, Clone)]
pub(crate) struct WebhookConfig {
    /// `http` or `https` (checked when the settings are read).
    pub(crate) url: Url,
    pub(crate) secret: Secret,
    /// Longest wait for the TCP (and TLS) connection.
    pub(crate) connect_timeout: Duration,
    /// Longest wait for a whole request and its answer.
    pub(crate) request_timeout: Duration,
    /// Most deliveries waiting (first attempt or retry) per sender.
    pub(crate) queue_capacity: usize,
    pub(crate) retry: Retry,
}

impl WebhookConfig {
    /// The URL's host, to name the webhook in logs: its path and query may
    /// hold a token and are never logged.
    pub(crate) fn host(&self) -> &str {
        self.url.host_str().unwrap_or("?")
    }
}

/// The metric names of one kind of POST. Counters: `sent` (answered 2xx),
/// `failed` (attempts that failed, retried or not) and `dropped` by
/// `reason` (`queue_full`: the oldest delivery pushed out of a full queue;
/// `gave_up`: a delivery that failed every attempt; `shutdown`: left when
/// the server stopped); gauge `queued` (deliveries waiting).
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) sent: &'static str,
    pub(crate) failed: &'static str,
    pub(crate) dropped: &'static str,
    pub(crate) queued: &'static str,
}

/// The push notifications' metrics (README, "Push notifications").
pub(crate) const PUSH_METRICS: Metrics = Metrics {
    sent: "chat_push_sent_total",
    failed: "chat_push_failed_total",
    dropped: "chat_push_dropped_total",
    queued: "chat_push_queued",
};

/// The metrics of care signals (crisis alerts, mood check-ins): a sender
/// of their own, so that a flood of pushes never pushes an alert out of a
/// full queue.
pub(crate) const CARE_METRICS: Metrics = Metrics {
    sent: "chat_webhook_care_sent_total",
    failed: "chat_webhook_care_failed_total",
    dropped: "chat_webhook_care_dropped_total",
    queued: "chat_webhook_care_queued",
};

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` under the key of
/// `mac`.
fn signature(mac: &HmacSha256, body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut mac = mac.clone();
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 15)]));
    }
    out
}

/// One body on its way, with what stays the same on every attempt.
#[derive(Debug)]
struct Delivery {
    id: String,
    body: Bytes,
    signature: String,
    /// Attempts made so far.
    attempts: u32,
    queued_at: Instant,
}

/// The deliveries waiting for their (next) attempt.
#[derive(Debug)]
struct Queue {
    /// By the order they were first queued in: the first is the oldest,
    /// the one dropped when the queue is full. A retry keeps its place.
    waiting: BTreeMap<u64, Delivery>,
    /// When each waiting delivery is due, soonest first. Entries of
    /// deliveries dropped meanwhile stay until they come up (or the heap
    /// is compacted) and are skipped.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    next: u64,
    capacity: usize,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Self {
            waiting: BTreeMap::new(),
            due: BinaryHeap::new(),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    /// Queues `delivery` (at its old place, `seq`, for a retry), due `at`;
    /// returns how many of the oldest were dropped to make room.
    fn push(&mut self, delivery: Delivery, at: Instant, seq: Option<u64>) -> usize {
        let seq = seq.unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        self.waiting.insert(seq, delivery);
        self.due.push(Reverse((at, seq)));
        let mut dropped = 0;
        while self.waiting.len() > self.capacity {
            self.waiting.pop_first();
            dropped += 1;
        }
        if self.due.len() > 2 * self.capacity {
            let waiting = &self.waiting;
            self.due
                .retain(|Reverse((_, seq))| waiting.contains_key(seq));
        }
        dropped
    }

    /// The delivery due first, if it is due by `now`; otherwise when the
    /// next one is due (`None`: nothing waits).
    fn pop_due(&mut self, now: Instant) -> Result<(u64, Delivery), Option<Instant>> {
        while let Some(&Reverse((at, seq))) = self.due.peek() {
            if !self.waiting.contains_key(&seq) {
                self.due.pop();
                continue;
            }
            if at > now {
                return Err(Some(at));
            }
            self.due.pop();
            if let Some(delivery) = self.waiting.remove(&seq) {
                return Ok((seq, delivery));
            }
        }
        Err(None)
    }
}

/// Queues signed POSTs to the webhook and sends them from a task of its
/// own; cheap to clone (clones share the queue).
#[derive(Clone)]
pub(crate) struct WebhookSender {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the worker for a new delivery.
    wake: Notify,
    client: reqwest::Client,
    url: Url,
    host: String,
    /// Keyed once with the secret; cloned for each signature.
    mac: HmacSha256,
    retry: Retry,
    metrics: &'static Metrics,
    /// Deliveries taken from the queue and not yet sent, re-queued or
    /// given up (for [`WebhookSender::drain`]).
    in_flight: AtomicUsize,
    /// The last attempt failed: the next failure is not logged again.
    failing: AtomicBool,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("host", &self.shared.host)
            .field("metrics", &self.shared.metrics.sent)
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// A sender to `config`'s webhook, counting into `metrics`. Starts its
    /// worker task: must be called within a Tokio runtime.
    pub(crate) fn start(config: &WebhookConfig, metrics: &'static Metrics) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A redirect would send the signed body somewhere the host app
            // did not configure; a 3xx is a failure like any non-2xx.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chat-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the webhook's HTTP client: {e}"))?;
        let mac = HmacSha256::new_from_slice(config.secret.expose())
            .map_err(|_| "the webhook secret cannot key HMAC-SHA256".to_owned())?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(config.queue_capacity)),
            wake: Notify::new(),
            client,
            url: config.url.clone(),
            host: config.host().to_owned(),
            mac,
            retry: config.retry,
            metrics,
            in_flight: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        });
        tokio::spawn(run(shared.clone()));
        Ok(Self { shared })
    }

    /// Queues `body` (JSON) for the webhook and returns at once; it is
    /// signed now and keeps its `X-Chat-Delivery` id on every retry.
    pub(crate) fn post(&self, body: Bytes) {
        let delivery = Delivery {
            id: ulid::Ulid::new().to_string(),
            signature: signature(&self.shared.mac, &body),
            body,
            attempts: 0,
            queued_at: Instant::now(),
        };
        self.shared.enqueue(delivery, Instant::now(), None);
    }

    /// Waits until every queued delivery was sent or given up, or `within`
    /// passed; returns how many were left (and counts them dropped).
    pub(crate) async fn drain(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let left = {
                let queue = self.shared.lock();
                queue.waiting.len() + self.shared.in_flight.load(Ordering::SeqCst)
            };
            if left == 0 {
                return 0;
            }
            if Instant::now() >= deadline {
                metrics::counter!(self.shared.metrics.dropped, "reason" => "shutdown")
                    .increment(left as u64);
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, delivery: Delivery, at: Instant, seq: Option<u64>) {
        let (dropped, waiting) = {
            let mut queue = self.lock();
            let dropped = queue.push(delivery, at, seq);
            (dropped, queue.waiting.len())
        };
        if dropped > 0 {
            metrics::counter!(self.metrics.dropped, "reason" => "queue_full")
                .increment(dropped as u64);
        }
        metrics::gauge!(self.metrics.queued).set(waiting as f64);
        self.wake.notify_one();
    }

    /// Waits for the next due delivery and takes it out of the queue.
    async fn next_due(&self) -> (u64, Delivery) {
        loop {
            let woken = self.wake.notified();
            let next = {
                let mut queue = self.lock();
                match queue.pop_due(Instant::now()) {
                    Ok(due) => {
                        self.in_flight.fetch_add(1, Ordering::SeqCst);
                        metrics::gauge!(self.metrics.queued).set(queue.waiting.len() as f64);
                        return due;
                    }
                    Err(next) => next,
                }
            };
            match next {
                None => woken.await,
                Some(at) => {
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }

    /// One attempt at `delivery`; re-queues it at its place `seq` after a
    /// failure, unless it is given up.
    async fn attempt(&self, seq: u64, mut delivery: Delivery) {
        match self.send(&delivery).await {
            Ok(()) => {
                metrics::counter!(self.metrics.sent).increment(1);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(host = %self.host, "the webhook answers again");
                }
            }
            Err(error) => {
                metrics::counter!(self.metrics.failed).increment(1);
                delivery.attempts += 1;
                let (host, attempts) = (&self.host, delivery.attempts);
                // Once per outage, not once per delivery.
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(%host, delivery = %delivery.id, attempts, %error, "webhook attempt failed");
                } else {
                    tracing::warn!(%host, %error, "the webhook failed; retrying with backoff");
                }
                let delay = self.retry.delay(attempts, jitter());
                let at = Instant::now() + delay;
                if attempts >= self.retry.max_attempts
                    || at.duration_since(delivery.queued_at) > self.retry.max_age
                {
                    metrics::counter!(self.metrics.dropped, "reason" => "gave_up").increment(1);
                    tracing::debug!(%host, delivery = %delivery.id, attempts, "webhook delivery given up");
                } else {
                    self.enqueue(delivery, at, Some(seq));
                }
            }
        }
        // Only now, so that `drain` never sees the delivery nowhere.
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// POSTs the body; `Err` says why the attempt failed (without the URL,
    /// whose query may hold a token).
    async fn send(&self, delivery: &Delivery) -> Result<(), String> {
        let mut answer = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &delivery.signature)
            .header(DELIVERY_HEADER, &delivery.id)
            .body(delivery.body.clone())
            .send()
            .await
            .map_err(describe)?;
        let status = answer.status();
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match answer.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                // The answer is not ours to judge, only its status.
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// A request error and its causes, without the URL.
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The worker: takes due deliveries, at most [`MAX_IN_FLIGHT`] at once.
async fn run(shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (seq, delivery) = shared.next_due().await;
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.attempt(seq, delivery).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> Delivery {
        Delivery {
            id: id.to_owned(),
            body: Bytes::from_static(b"{}"),
            signature: String::new(),
            attempts: 0,
            queued_at: Instant::now(),
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_in_lowercase_hex() {
        // RFC 4231, test case 2.
        let mac = HmacSha256::new_from_slice(b"Jefe").expect("any key length");
        assert_eq!(
            signature(&mac, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2".into());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        let config: std::collections::HashMap<String, Secret> =
            toml::from_str("secret = \"hunter2\"").expect("valid TOML");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let retry = Retry::default();
        let full: Vec<u64> = (1..=10)
            .map(|n| retry.delay(n, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(
            full,
            [
                500, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(retry.delay(1, 0.0), Duration::from_millis(250));
        assert_eq!(retry.delay(40, 0.0), Duration::from_secs(30));
        assert_eq!(retry.delay(u32::MAX, 1.0), Duration::from_secs(60));
        let j = jitter();
        assert!((0.0..=1.0).contains(&j));
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_retries_keep_their_place() {
        let now = Instant::now();
        let mut queue = Queue::new(2);
        assert_eq!(queue.push(delivery("a"), now, None), 0);
        assert_eq!(queue.push(delivery("b"), now, None), 0);
        let (seq_a, a) = queue.pop_due(now).expect("a is due");
        assert_eq!(a.id, "a");
        // While `a` is in flight, `c` comes; `a` fails and goes back, due
        // later but still the oldest: it is the one dropped.
        assert_eq!(queue.push(delivery("c"), now, None), 0);
        let later = now + Duration::from_secs(1);
        assert_eq!(queue.push(a, later, Some(seq_a)), 1);
        let ids: Vec<&str> = queue.waiting.values().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(queue.pop_due(now).expect("b").1.id, "b");
        assert_eq!(queue.pop_due(now).expect("c").1.id, "c");
        assert!(
            matches!(queue.pop_due(later), Err(None)),
            "a's entry is skipped"
        );
    }

    #[test]
    fn retries_wait_for_their_time() {
        let now = Instant::now();
        let mut queue = Queue::new(10);
        let later = now + Duration::from_millis(500);
        queue.push(delivery("retry"), later, Some(0));
        queue.push(delivery("new"), now, None);
        assert_eq!(queue.pop_due(now).expect("new is due").1.id, "new");
        assert!(matches!(queue.pop_due(now), Err(Some(at)) if at == later));
        assert_eq!(queue.pop_due(later).expect("due now").1.id, "retry");
    }

    /// `https://` goes through the TLS stack: what reaches the socket is a
    /// TLS ClientHello, not an HTTP request.
    #[tokio::test]
    async fn https_webhooks_speak_tls() {
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let config = WebhookConfig {
            url: Url::parse(&format!("https://127.0.0.1:{port}/hook")).expect("URL"),
            secret: Secret::new("s".into()),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            queue_capacity: 10,
            retry: Retry::default(),
        };
        let sender = WebhookSender::start(&config, &PUSH_METRICS).expect("client");
        sender.post(Bytes::from_static(b"{}"));
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the sender connects")
            .expect("accept");
        let mut hello = [0u8; 6];
        socket.read_exact(&mut hello).await.expect("first bytes");
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert_eq!(hello[5], 0x01, "a ClientHello");
    }

    #[test]
    fn the_schedule_of_dropped_deliveries_is_compacted() {
        let now = Instant::now();
        let mut queue = Queue::new(3);
        for i in 0..100 {
            queue.push(delivery(&i.to_string()), now + Duration::from_secs(i), None);
        }
        assert_eq!(queue.waiting.len(), 3);
        assert!(queue.due.len() <= 2 * 3 + 1);
    }
}
