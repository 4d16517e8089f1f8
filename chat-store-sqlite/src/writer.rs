//! The single writer thread and its group commit.
//!
//! Every write of the store is a job sent to one thread that owns the write
//! connection. The thread takes the first waiting job, then, one after the
//! other, every job waiting once the previous one ran (up to `batch_max`
//! changes, so jobs that arrive meanwhile join too), runs them all in one
//! transaction, each step inside its own SAVEPOINT so that a failing
//! step rolls back only itself, COMMITs once (one fsync for the group) and
//! only then answers the callers. Posts, the hot path, skip the savepoint:
//! they are refused before their first write or not at all, and a failure
//! after it (an I/O error) fails the group instead of one post.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use chat_core::{ChatId, ChatKind, store::Members};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{Error, Failed},
    prepared::Prepared,
};

/// How many jobs may wait for the writer before callers wait to enqueue.
const QUEUE_CAPACITY: usize = 4096;

/// Most chats whose members the writer keeps in its view; past that it
/// starts again from empty (a reload is two short reads).
const MEMBERS_VIEW_MAX: usize = 10_000;

/// The writer's view of each chat's members, as the changes written so far
/// left them: what `apply` returns as every change's audience (see
/// "Audience at commit" on [`chat_core::Store`]). The writer is the only
/// writer of the database, so the view is exact as long as every write that
/// touches participants, their settings or blocks forgets what it changed,
/// and a group that fails to commit forgets everything (its changes are
/// gone, but a load inside it may have seen them).
#[derive(Default)]
pub(crate) struct MembersView {
    map: RefCell<HashMap<ChatId, Arc<Members>>>,
}

impl MembersView {
    fn get_or_load(&self, conn: &Connection, chat: ChatId) -> Result<Arc<Members>, Error> {
        if let Some(m) = self.map.borrow().get(&chat) {
            return Ok(m.clone());
        }
        let Some(loaded) = crate::read::chat(conn, chat)? else {
            return Err(Error::Contract(chat_core::Error::not_found(
                "chat not found",
            )));
        };
        let blocked = match &loaded.participants[..] {
            [a, b] if loaded.kind == ChatKind::Direct => {
                crate::read::is_blocked_either(conn, &a.user_id, &b.user_id)?
            }
            _ => false,
        };
        let members = Arc::new(Members::of(&loaded, blocked));
        let mut map = self.map.borrow_mut();
        if map.len() >= MEMBERS_VIEW_MAX {
            map.clear();
        }
        map.insert(chat, members.clone());
        Ok(members)
    }

    fn forget(&self, chat: ChatId) {
        self.map.borrow_mut().remove(&chat);
    }

    fn clear(&self) {
        self.map.borrow_mut().clear();
    }
}

/// One transaction of the writer, as a job sees it: a sequence of steps,
/// each atomic on its own.
pub(crate) struct Batch<'b, 'c> {
    prepared: &'b Prepared<'c>,
    members: &'b MembersView,
    /// Set when the group's transaction can no longer be committed (a
    /// savepoint could not be rolled back, or SQLite rolled the whole
    /// transaction back after an I/O error): the rest of the group fails.
    broken: Option<Arc<rusqlite::Error>>,
    in_step: bool,
    /// Inside [`Batch::step_unguarded`].
    in_unguarded: bool,
    /// Whether the unguarded step has written anything yet.
    wrote: Cell<bool>,
}

impl<'b, 'c> Batch<'b, 'c> {
    fn conn(&self) -> &'c Connection {
        self.prepared.conn()
    }

    fn new(prepared: &'b Prepared<'c>, members: &'b MembersView) -> Self {
        Self {
            prepared,
            members,
            broken: None,
            in_step: false,
            in_unguarded: false,
            wrote: Cell::new(false),
        }
    }

    /// The members of `chat` as the group's writes so far left them. A
    /// failure to read them fails the whole group: the change before it
    /// is written, and must not be acknowledged without its audience.
    pub(crate) fn members(&mut self, chat: ChatId) -> Result<Arc<Members>, Error> {
        if let Some(e) = &self.broken {
            return Err(Error::Commit(e.clone()));
        }
        match self.members.get_or_load(self.conn(), chat) {
            Ok(m) => Ok(m),
            Err(e) => {
                tracing::error!(error = %e, "could not read a chat's members; failing the group");
                let broken = Arc::new(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("could not read the members of a changed chat".to_owned()),
                ));
                self.broken = Some(broken.clone());
                Err(Error::Commit(broken))
            }
        }
    }

    /// Forgets the members of `chat` (a write changed them), or of every
    /// chat (`None`: a block, which may concern any direct chat).
    pub(crate) fn forget_members(&self, chat: Option<ChatId>) {
        match chat {
            Some(chat) => self.members.forget(chat),
            None => self.members.clear(),
        }
    }

    /// Runs `f` inside its own savepoint: if it fails, everything it wrote
    /// is rolled back and the rest of the group is unaffected.
    pub(crate) fn step<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if let Some(e) = &self.broken {
            return Err(Error::Commit(e.clone()));
        }
        exec(self.conn(), "SAVEPOINT step")?;
        self.in_step = true;
        let out = f(self.conn()).and_then(|value| {
            exec(self.conn(), "RELEASE step")?;
            self.in_step = false;
            Ok(value)
        });
        if out.is_err() {
            self.abandon_step();
        }
        out
    }

    /// Runs `f` without a savepoint, for a change whose refusals all come
    /// before its first write (a post: membership and reply checks, then
    /// an insert that either happens or is skipped). `f` calls
    /// `wrote.set(true)` once it has written; an error after that cannot be
    /// undone alone, so it fails the whole group, whose callers retry.
    ///
    /// A post is the hot path: a savepoint costs two more statements and
    /// copies every page the post touches into the sub-journal.
    pub(crate) fn step_unguarded<T>(
        &mut self,
        f: impl FnOnce(&Prepared<'c>, &Cell<bool>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if let Some(e) = &self.broken {
            return Err(Error::Commit(e.clone()));
        }
        self.in_unguarded = true;
        self.wrote.set(false);
        let out = f(self.prepared, &self.wrote);
        if out.is_err() {
            self.abandon_step();
        }
        self.in_unguarded = false;
        out
    }

    /// Rolls back the open step, if any; marks the group broken if that is
    /// not possible.
    fn abandon_step(&mut self) {
        if self.in_unguarded {
            self.in_unguarded = false;
            if self.wrote.get() || self.conn().is_autocommit() {
                self.broken = Some(Arc::new(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("a change failed after writing; the group is rolled back".to_owned()),
                )));
            }
            return;
        }
        if !self.in_step {
            return;
        }
        self.in_step = false;
        if self.conn().is_autocommit() {
            // SQLite rolled back the whole transaction (SQLITE_FULL,
            // SQLITE_IOERR, ...): the steps before this one are gone too.
            self.broken = Some(Arc::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the transaction was rolled back by SQLite".to_owned()),
            )));
            return;
        }
        let rolled_back =
            exec(self.conn(), "ROLLBACK TO step").and_then(|()| exec(self.conn(), "RELEASE step"));
        if let Err(e) = rolled_back {
            tracing::error!(error = %e, "could not roll back a savepoint; failing the group");
            self.broken = Some(Arc::new(e));
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// A job for the writer, type-erased.
pub(crate) trait Work: Send {
    /// How many changes it carries (for `batch_max`).
    fn size(&self) -> usize;
    /// Runs it inside the group's transaction; the returned value answers
    /// the caller once the group's fate is known.
    fn run(self: Box<Self>, batch: &mut Batch<'_, '_>) -> Box<dyn Reply>;
    /// Answers the caller without running (the group could not start).
    fn fail(self: Box<Self>, why: Failed);
}

/// The pending answer of a job that ran.
pub(crate) trait Reply: Send {
    /// Answers the caller: with the job's output if the group committed.
    fn finish(self: Box<Self>, commit: Result<(), Failed>);
}

struct Task<F, T> {
    f: F,
    size: usize,
    reply: oneshot::Sender<Result<T, Failed>>,
}

struct Ran<T> {
    out: T,
    reply: oneshot::Sender<Result<T, Failed>>,
}

impl<F, T> Work for Task<F, T>
where
    F: FnOnce(&mut Batch<'_, '_>) -> T + Send + 'static,
    T: Send + 'static,
{
    fn size(&self) -> usize {
        self.size
    }

    fn run(self: Box<Self>, batch: &mut Batch<'_, '_>) -> Box<dyn Reply> {
        let Task { f, reply, .. } = *self;
        Box::new(Ran {
            out: f(batch),
            reply,
        })
    }

    fn fail(self: Box<Self>, why: Failed) {
        // The caller may have gone away; then nobody needs the answer.
        let _ = self.reply.send(Err(why));
    }
}

impl<T: Send> Reply for Ran<T> {
    fn finish(self: Box<Self>, commit: Result<(), Failed>) {
        let Ran { out, reply } = *self;
        let _ = reply.send(commit.map(|()| out));
    }
}

/// Counters of the writer since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed (one fsync each with `synchronous=FULL`).
    pub commits: u64,
    /// Write calls (`apply` and the other writes) they carried.
    pub jobs: u64,
    /// Changes they carried (an `apply` counts its changes; other writes
    /// count one).
    pub changes: u64,
    /// Groups whose transaction failed as a whole.
    pub failed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    changes: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            jobs: self.jobs.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The handle of the writer thread: where jobs are sent.
#[derive(Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Work>>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer thread on `conn`. Dropping the returned `Writer`
    /// lets the thread finish every queued job, close the connection and
    /// exit.
    pub(crate) fn spawn(
        conn: Connection,
        batch_max: usize,
    ) -> Result<(Self, JoinHandle<()>), Error> {
        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let handle = std::thread::Builder::new()
            .name("chat-store-sqlite-writer".to_owned())
            .spawn(move || run(conn, rx, batch_max.max(1), &shared))
            .map_err(Error::Spawn)?;
        Ok((Self { jobs, counters }, handle))
    }

    /// The writer's counters.
    pub(crate) fn stats(&self) -> CommitStats {
        self.counters.snapshot()
    }

    /// Sends a job carrying `size` changes and waits for its answer, which
    /// comes after its group committed.
    pub(crate) async fn submit<T, F>(&self, size: usize, f: F) -> Result<T, Failed>
    where
        F: FnOnce(&mut Batch<'_, '_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(Task { f, size, reply }))
            .await
            .map_err(|_| Failed::Closed)?;
        // A dropped sender means the writer panicked while running the job.
        answer.await.unwrap_or(Err(Failed::Closed))
    }
}

/// The writer thread's loop: one group per iteration, until every `Writer`
/// is dropped and the queue is empty.
fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Work>>,
    batch_max: usize,
    counters: &Counters,
) {
    let prepared = Prepared::new(&conn);
    let members = MembersView::default();
    let mut carried: Option<Box<dyn Work>> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.blocking_recv() {
                Some(job) => job,
                None => break,
            },
        };
        carried = commit_group(&prepared, &members, first, &mut rx, batch_max, counters);
    }
    tracing::debug!("SQLite writer stopped");
}

/// Runs `first`, then every job that is waiting once the one before it
/// ran (up to `batch_max` changes), in one transaction, and answers them
/// all after it committed. Returns the job that did not fit.
///
/// Taking the next job only after running the previous one, rather than
/// only what was queued when the group began, lets a job that arrives
/// while the group runs join it instead of waiting for the next commit:
/// under load the callers answered by one commit send their next writes
/// while the writer still works, and with a snapshot they would form a
/// second group of their own, so every commit (whose cost is mostly the
/// index pages it writes to the WAL, however many rows changed them) would
/// carry half as many changes. A lone job still commits at once.
fn commit_group(
    prepared: &Prepared<'_>,
    members: &MembersView,
    first: Box<dyn Work>,
    rx: &mut mpsc::Receiver<Box<dyn Work>>,
    batch_max: usize,
    counters: &Counters,
) -> Option<Box<dyn Work>> {
    let conn = prepared.conn();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let why = Failed::Commit(Arc::new(e));
        tracing::error!(error = ?why, "could not begin a write transaction");
        counters.failed.fetch_add(1, Ordering::Relaxed);
        first.fail(why);
        return None;
    }
    let mut batch = Batch::new(prepared, members);
    let mut replies = Vec::new();
    let (mut jobs, mut changes) = (0, 0);
    let mut next = Some(first);
    let mut carried = None;
    while let Some(job) = next.take() {
        jobs += 1;
        changes += job.size();
        match catch_unwind(AssertUnwindSafe(|| job.run(&mut batch))) {
            Ok(reply) => replies.push(reply),
            Err(_) => {
                // The job's answer channel was dropped while unwinding, so
                // its caller sees the store as closed for this call; its
                // partial writes are rolled back like a failed step's.
                tracing::error!("a write job panicked; rolled back its step");
                batch.abandon_step();
            }
        }
        if changes < batch_max {
            match rx.try_recv() {
                Ok(job) if changes + job.size() > batch_max => carried = Some(job),
                Ok(job) => next = Some(job),
                Err(_) => {}
            }
        }
    }
    counters.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
    counters
        .changes
        .fetch_add(changes as u64, Ordering::Relaxed);
    let result = match batch.broken.take() {
        Some(e) => Err(Failed::Commit(e)),
        None => exec(conn, "COMMIT").map_err(|e| Failed::Commit(Arc::new(e))),
    };
    if let Err(e) = &result {
        tracing::error!(error = ?e, jobs, changes, "group commit failed");
        members.clear();
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "could not roll back a failed group");
            }
        }
    } else {
        tracing::trace!(jobs, changes, "group committed");
    }
    // Counted before the callers hear of it.
    let counter = match result {
        Ok(()) => &counters.commits,
        Err(_) => &counters.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    for reply in replies {
        reply.finish(result.clone());
    }
    carried
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc as std_mpsc, time::Duration};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn start() -> Result<(Arc<Writer>, tempfile::TempDir), Box<dyn std::error::Error + Send + Sync>>
    {
        let dir = tempfile::tempdir()?;
        let conn = Connection::open(dir.path().join("w.db"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA foreign_keys = ON;
             CREATE TABLE t (v INTEGER UNIQUE);
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (parent INTEGER REFERENCES parent (id)
                 DEFERRABLE INITIALLY DEFERRED);",
        )?;
        let (writer, _thread) = Writer::spawn(conn, 100)?;
        Ok((Arc::new(writer), dir))
    }

    fn insert(v: i64) -> impl FnOnce(&mut Batch<'_, '_>) -> Result<(), Error> + Send + 'static {
        move |batch| {
            batch.step(|conn| {
                conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                Ok(())
            })
        }
    }

    fn count(dir: &tempfile::TempDir) -> Result<i64, Error> {
        let conn = Connection::open(dir.path().join("w.db"))?;
        Ok(conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
    }

    /// Holds the writer inside a job until the returned sender is dropped,
    /// so that the jobs submitted meanwhile queue, in order, and join the
    /// holding job's group.
    async fn hold(writer: &Arc<Writer>) -> Result<std_mpsc::Sender<()>, oneshot::error::RecvError> {
        let (release, wait) = std_mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let w = Arc::clone(writer);
        tokio::spawn(async move {
            w.submit(1, move |_| {
                let _ = started.send(());
                let _ = wait.recv();
            })
            .await
        });
        running.await?;
        Ok(release)
    }

    /// Submits `f` and waits until it is queued (the writer is held, so it
    /// stays queued), so that jobs queue in the order of the calls.
    async fn enqueue<T, F>(writer: &Arc<Writer>, f: F) -> tokio::task::JoinHandle<Result<T, Failed>>
    where
        F: FnOnce(&mut Batch<'_, '_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let before = writer.jobs.capacity();
        let w = Arc::clone(writer);
        let handle = tokio::spawn(async move { w.submit(1, f).await });
        while writer.jobs.capacity() == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle
    }

    #[tokio::test]
    async fn a_failing_step_fails_only_its_own_caller() -> TestResult {
        let (writer, dir) = start()?;
        let release = hold(&writer).await?;
        let first = enqueue(&writer, insert(1)).await;
        let clash = enqueue(&writer, insert(1)).await;
        let third = enqueue(&writer, insert(2)).await;
        drop(release);

        assert!(matches!(first.await?, Ok(Ok(()))));
        let clash = clash.await?;
        assert!(
            matches!(&clash, Ok(Err(e)) if e.is_unique_violation()),
            "{clash:?}"
        );
        assert!(matches!(third.await?, Ok(Ok(()))));
        assert_eq!(count(&dir)?, 2);
        let stats = writer.stats();
        // The three joined the holding job's group.
        assert_eq!((stats.commits, stats.jobs, stats.failed), (1, 4, 0));
        Ok(())
    }

    #[tokio::test]
    async fn jobs_that_arrive_while_a_group_runs_join_it() -> TestResult {
        let (writer, dir) = start()?;
        // The holding job starts a group alone; a job queued while it runs
        // joins that group.
        let release = hold(&writer).await?;
        let joined = enqueue(&writer, insert(1)).await;
        drop(release);
        assert!(matches!(joined.await?, Ok(Ok(()))));
        assert_eq!(count(&dir)?, 1);
        let stats = writer.stats();
        assert_eq!((stats.commits, stats.jobs, stats.changes), (1, 2, 2));

        // A lone job commits at once.
        assert!(matches!(writer.submit(1, insert(2)).await, Ok(Ok(()))));
        assert_eq!(writer.stats().commits, 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_job_that_would_pass_batch_max_waits_for_the_next_group() -> TestResult {
        // `start` caps a group at 100 changes.
        let (writer, dir) = start()?;
        let release = hold(&writer).await?;
        let before = writer.jobs.capacity();
        let w = Arc::clone(&writer);
        let large = tokio::spawn(async move { w.submit(100, insert(1)).await });
        while writer.jobs.capacity() == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let small = enqueue(&writer, insert(2)).await;
        drop(release);
        assert!(matches!(large.await?, Ok(Ok(()))));
        assert!(matches!(small.await?, Ok(Ok(()))));
        assert_eq!(count(&dir)?, 2);
        let stats = writer.stats();
        // The holding job alone (1 + 100 > 100), then the large one with
        // the small one queued behind it, which also passes the cap.
        assert_eq!((stats.commits, stats.jobs, stats.changes), (3, 3, 102));
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_caller_of_the_group() -> TestResult {
        let (writer, dir) = start()?;
        let release = hold(&writer).await?;
        let fine = enqueue(&writer, insert(1)).await;
        // A deferred foreign key is only checked by COMMIT, which fails.
        let orphan = enqueue(&writer, |batch: &mut Batch<'_, '_>| {
            batch.step(|conn| {
                conn.execute("INSERT INTO child (parent) VALUES (42)", [])?;
                Ok(())
            })
        })
        .await;
        drop(release);

        assert!(matches!(fine.await?, Err(Failed::Commit(_))));
        assert!(matches!(orphan.await?, Err(Failed::Commit(_))));
        assert_eq!(count(&dir)?, 0);
        assert_eq!(writer.stats().failed, 1);

        // The writer goes on with the next group.
        assert!(matches!(writer.submit(1, insert(3)).await, Ok(Ok(()))));
        assert_eq!(count(&dir)?, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_panicking_job_is_rolled_back_alone() -> TestResult {
        let (writer, dir) = start()?;
        let release = hold(&writer).await?;
        let before = enqueue(&writer, insert(1)).await;
        let panics = enqueue(&writer, |batch: &mut Batch<'_, '_>| {
            batch.step(|conn| {
                conn.execute("INSERT INTO t (v) VALUES (2)", [])?;
                panic!("a bug in a write");
                #[allow(unreachable_code)]
                Ok(())
            })
        })
        .await;
        let after = enqueue(&writer, insert(3)).await;
        drop(release);

        assert!(matches!(before.await?, Ok(Ok(()))));
        assert!(matches!(panics.await?, Err(Failed::Closed)));
        assert!(matches!(after.await?, Ok(Ok(()))));
        let conn = Connection::open(dir.path().join("w.db"))?;
        let values: Vec<i64> = conn
            .prepare("SELECT v FROM t ORDER BY v")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        assert_eq!(values, vec![1, 3]);
        Ok(())
    }
    /// An unguarded step that inserts `v`, then fails with `fail` before
    /// (`after_write = false`) or after its insert.
    fn unguarded(
        v: i64,
        after_write: bool,
    ) -> impl FnOnce(&mut Batch<'_, '_>) -> Result<(), Error> + Send + 'static {
        move |batch| {
            batch.step_unguarded(|prepared, wrote| {
                let conn = prepared.conn();
                if !after_write {
                    return Err(Error::Contract(chat_core::Error::not_found(
                        "refused first",
                    )));
                }
                conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                wrote.set(true);
                Err(Error::Contract(chat_core::Error::invalid(
                    "failed after writing",
                )))
            })
        }
    }

    #[tokio::test]
    async fn an_unguarded_refusal_before_writing_leaves_the_group_alone() -> TestResult {
        let (writer, dir) = start()?;
        let release = hold(&writer).await?;
        let first = enqueue(&writer, insert(1)).await;
        let refused = enqueue(&writer, unguarded(2, false)).await;
        let ok = enqueue(&writer, |batch: &mut Batch<'_, '_>| {
            batch.step_unguarded(|prepared, wrote| {
                let conn = prepared.conn();
                conn.execute("INSERT INTO t (v) VALUES (3)", [])?;
                wrote.set(true);
                Ok(())
            })
        })
        .await;
        let clash = enqueue(&writer, |batch: &mut Batch<'_, '_>| {
            // A statement that fails is undone by SQLite on its own.
            batch.step_unguarded(|prepared, _| {
                prepared
                    .conn()
                    .execute("INSERT INTO t (v) VALUES (1)", [])?;
                Ok(())
            })
        })
        .await;
        let last = enqueue(&writer, insert(4)).await;
        drop(release);

        assert!(matches!(first.await?, Ok(Ok(()))));
        assert!(matches!(refused.await?, Ok(Err(Error::Contract(_)))));
        assert!(matches!(ok.await?, Ok(Ok(()))));
        assert!(matches!(clash.await?, Ok(Err(e)) if e.is_unique_violation()));
        assert!(matches!(last.await?, Ok(Ok(()))));
        assert_eq!(count(&dir)?, 3);
        Ok(())
    }

    #[tokio::test]
    async fn an_unguarded_failure_after_writing_rolls_back_the_whole_group() -> TestResult {
        let (writer, dir) = start()?;
        let release = hold(&writer).await?;
        let before = enqueue(&writer, insert(1)).await;
        let broken = enqueue(&writer, unguarded(2, true)).await;
        let after = enqueue(&writer, insert(3)).await;
        drop(release);

        // Nothing of the group is committed: the caller of the failed step
        // and its neighbours all hear of the failure and can retry.
        assert!(matches!(before.await?, Err(Failed::Commit(_))));
        assert!(matches!(broken.await?, Err(Failed::Commit(_))));
        assert!(matches!(after.await?, Err(Failed::Commit(_))));
        assert_eq!(count(&dir)?, 0);

        // A panic after writing fails its group just the same.
        let release = hold(&writer).await?;
        let neighbour = enqueue(&writer, insert(4)).await;
        let panics = enqueue(&writer, |batch: &mut Batch<'_, '_>| {
            batch.step_unguarded(|prepared, wrote| {
                let conn = prepared.conn();
                conn.execute("INSERT INTO t (v) VALUES (5)", [])?;
                wrote.set(true);
                panic!("a bug after writing");
                #[allow(unreachable_code)]
                Ok(())
            })
        })
        .await;
        drop(release);
        assert!(matches!(neighbour.await?, Err(Failed::Commit(_))));
        assert!(panics.await?.is_err());
        assert_eq!(count(&dir)?, 0);

        // The writer goes on with the next group.
        assert!(matches!(writer.submit(1, insert(6)).await, Ok(Ok(()))));
        assert_eq!(count(&dir)?, 1);
        Ok(())
    }
}
