//! Conformance suites for the engine's seams (feature `testing`).
//!
//! [`store_suite`] holds one public async function per behaviour of the
//! [`Store`] contract (see the trait's `# Contract` section and the docs of
//! each [`Change`](crate::store::Change)). Each function takes a fresh, empty store and panics with
//! a message naming the broken rule.
//!
//! An adapter crate runs the whole suite against its real backend with
//! [`store_conformance_tests!`](crate::store_conformance_tests), which expands
//! into one `#[tokio::test]` per case, so that each case reports on its own:
//!
//! ```ignore
//! // chat-store-foo/tests/conformance.rs
//! // [dev-dependencies]
//! // chat-core = { workspace = true, features = ["testing"] }
//! // tokio = { workspace = true, features = ["macros", "rt-multi-thread"] }
//! use std::sync::Arc;
//!
//! use chat_core::testing::Fixture;
//!
//! async fn setup() -> Fixture {
//!     let dir = tempfile::tempdir().expect("temp dir");
//!     let store = FooStore::open(dir.path().join("chat.db")).await.expect("open");
//!     // The store is dropped first, then the temp dir.
//!     Fixture::with_guard(Arc::new(store), dir)
//! }
//!
//! chat_core::store_conformance_tests!(setup);
//! ```
//!
//! The in-memory store runs the same suite inside `chat-core`, which tests
//! the suite itself.

use std::{any::Any, fmt, future::Future, sync::Arc, time::Duration};

use crate::store::Store;

/// How long one case may run before it is reported as hanging.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// A store under test, and what must live as long as it does.
///
/// The setup function given to
/// [`store_conformance_tests!`](crate::store_conformance_tests) returns one
/// per case. It must hold a fresh, empty store: the cases count chats,
/// reports and users, so state shared between cases makes them fail.
///
/// After the case, the store is dropped first and the guard after it, so a
/// guard can be what the store lives in: a temporary directory, a database
/// that is dropped, a container.
pub struct Fixture {
    /// The store under test. Declared before `guard`, so dropped before it.
    pub store: Arc<dyn Store>,
    guard: Option<Box<dyn Any + Send>>,
}

impl Fixture {
    /// A fixture for a store that needs no cleanup.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, guard: None }
    }

    /// A fixture whose `guard` (a temp dir, a database handle) is dropped
    /// after the store, when the case is over.
    pub fn with_guard(store: Arc<dyn Store>, guard: impl Any + Send) -> Self {
        Self {
            store,
            guard: Some(Box::new(guard)),
        }
    }

    /// Runs one case (a function of [`store_suite`]) against the store,
    /// failing it if it takes longer than [`CASE_TIMEOUT`], then drops the
    /// store and then the guard.
    pub async fn run<F, Fut>(self, name: &str, case: F)
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let store = Arc::clone(&self.store);
        if tokio::time::timeout(CASE_TIMEOUT, case(store))
            .await
            .is_err()
        {
            panic!(
                "store conformance case `{name}` did not finish within {CASE_TIMEOUT:?} \
                 (a deadlock or a lost wake-up in the store?)"
            );
        }
        drop(self);
    }
}

/// What a conformance setup returns: a [`Fixture`], or `Option<Fixture>`
/// where `None` skips the case (a backend that is unreachable and not
/// required; the setup prints why).
pub trait IntoFixture {
    /// The fixture, or `None` to skip.
    fn into_fixture(self) -> Option<Fixture>;
}

impl IntoFixture for Fixture {
    fn into_fixture(self) -> Option<Fixture> {
        Some(self)
    }
}

impl IntoFixture for Option<Fixture> {
    fn into_fixture(self) -> Option<Fixture> {
        self
    }
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("guard", &self.guard.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Expands into one `#[tokio::test]` per case of
/// [`store_suite`](crate::testing::store_suite), each run on a fresh
/// [`Fixture`](crate::testing::Fixture).
///
/// The argument is an async function (or any expression callable with no
/// arguments that returns a future) producing a `Fixture`:
///
/// ```ignore
/// async fn setup() -> chat_core::testing::Fixture {
///     chat_core::testing::Fixture::new(std::sync::Arc::new(chat_core::MemoryStore::new()))
/// }
///
/// chat_core::store_conformance_tests!(setup);
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features (as a dev-dependency). Arms starting with `@` are internal.
#[macro_export]
macro_rules! store_conformance_tests {
    (@list $($then:tt)*) => {
        $crate::store_conformance_tests! { @$($then)* [
            create_group_chat,
            create_direct_chat_is_unique_per_pair,
            direct_chat_with_same_user_twice_is_rejected,
            list_chats_orders_by_last_activity_then_id,
            list_chats_pages_with_after_and_limit,
            co_members_are_distinct_and_exclude_self,
            post_assigns_gap_free_seqs,
            post_round_trips_media_and_system,
            post_is_idempotent_per_sender_and_client_id,
            post_client_id_is_scoped_per_sender,
            post_reusing_client_id_in_other_chat_conflicts,
            post_requires_participant_sender,
            post_to_missing_chat_is_not_found,
            post_reply_to_must_be_in_same_chat,
            edit_replaces_content_and_moves_updated_seq,
            edit_of_deleted_message_conflicts,
            message_changes_in_wrong_chat_are_not_found,
            changes_to_missing_chat_are_not_found,
            delete_leaves_tombstone,
            delete_twice_changes_nothing,
            react_adds_and_removes_in_order,
            react_duplicates_change_nothing,
            react_limits_distinct_emoji,
            react_to_deleted_message_conflicts,
            add_participant_records_system_message,
            add_participant_twice_conflicts,
            add_participant_respects_capacity,
            remove_participant_records_system_message,
            set_role_records_system_message,
            update_group_patches_fields,
            mark_moves_watermarks_forward_only,
            mark_clamps_to_last_seq,
            mark_read_implies_delivered,
            mark_by_non_participant_is_not_found,
            apply_batch_isolates_failures,
            history_returns_newest_first_within_bounds,
            changes_follow_updated_seq,
            unread_count_counts_visible_messages_from_others,
            find_by_client_id_returns_current_message,
            get_message_returns_current_state,
            set_block_reports_changes,
            blocked_by_user_keeps_blocking_order,
            is_blocked_either_checks_both_directions,
            get_user_is_none_until_something_is_stored,
            user_settings_do_not_clobber_each_other,
            insert_and_get_report,
            duplicate_open_report_returns_existing,
            list_reports_filters_by_status_oldest_first,
            resolve_report_closes_it_once,
            media_records_round_trip,
            duplicate_media_id_conflicts,
            participant_settings_round_trip,
            concurrent_posts_take_unique_gap_free_seqs,
            concurrent_retries_store_one_message,
            concurrent_marks_never_move_backwards,
            concurrent_direct_chat_creation_yields_one_chat,
            concurrent_adds_respect_capacity,
            concurrent_reactions_respect_max_distinct,
            concurrent_mixed_changes_take_distinct_seqs,
            batch_remove_then_post_never_addresses_the_removed,
            batch_add_then_post_addresses_the_added,
            audience_follows_mutes_and_blocks,
            groups_keep_an_admin,
            group_count_counts_groups_only,
            concurrent_posts_see_members_at_commit,
            get_users_answers_in_order,
            authorized_changes_need_the_role_at_commit,
        ] }
    };
    (@names [$($case:ident),* $(,)?]) => {
        /// The names of all cases, in the order the suite lists them (the
        /// names of the tests that
        /// [`store_conformance_tests!`](crate::store_conformance_tests)
        /// generates).
        pub const CASES: &[&str] = &[$(::core::stringify!($case)),*];
    };
    (@tests $setup:expr; [$($case:ident),* $(,)?]) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = $crate::testing::IntoFixture::into_fixture(($setup)().await) else {
                    // The setup skipped the case (its backend is unreachable
                    // and not required); it said so itself.
                    return;
                };
                fixture
                    .run(
                        ::core::stringify!($case),
                        $crate::testing::store_suite::$case,
                    )
                    .await;
            }
        )*
    };
    ($setup:expr $(,)?) => {
        $crate::store_conformance_tests! { @list tests $setup; }
    };
}

/// The [`Store`] conformance cases: one function per behaviour.
///
/// Every function takes a fresh, empty store and panics with a message
/// naming the broken rule. Timestamps are fixed, so failures reproduce.
pub mod store_suite {
    use std::{
        cmp::Reverse,
        collections::{BTreeMap, HashSet},
        fmt::Debug,
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering::SeqCst},
        },
    };

    use tokio::{sync::Barrier, task::JoinHandle};
    use ulid::Ulid;

    use crate::{
        error::{Error, Result},
        model::{
            Chat, ChatId, ChatKind, Encryption, MediaId, MediaRecord, MediaRef, Message, MessageId,
            MessageType, Participant, ParticipantSettings, Privacy, Reactions, Report, ReportId,
            ReportStatus, Role, SystemEvent, Timestamp, UserId, UserRecord,
        },
        store::{
            Applied, Change, ChatListQuery, GroupPatch, HistoryQuery, NewChat, NewMessage,
            ReportResolution, Store,
        },
    };

    crate::store_conformance_tests!(@list names);

    mod audience;
    mod users;
    pub use self::{audience::*, users::*};

    // --- helpers -------------------------------------------------------------

    /// 2026-11-23T20:00:00Z: the suite's epoch.
    const T0: i64 = 1_795_464_000_000;

    /// The suite's epoch plus `secs` seconds.
    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(T0 + secs * 1_000)
    }

    #[track_caller]
    fn user(name: &str) -> UserId {
        match UserId::new(name) {
            Ok(u) => u,
            Err(e) => panic!("bad user id in the suite: {e}"),
        }
    }

    #[track_caller]
    fn ok<T>(result: Result<T>, what: &str) -> T {
        match result {
            Ok(v) => v,
            Err(e) => panic!("{what}: expected success, got {e:?}"),
        }
    }

    #[track_caller]
    fn some<T>(value: Option<T>, what: &str) -> T {
        match value {
            Some(v) => v,
            None => panic!("{what}: expected Some, got None"),
        }
    }

    #[track_caller]
    fn not_found<T: Debug>(result: Result<T>, what: &str) {
        match result {
            Err(Error::NotFound(_)) => {}
            other => panic!("{what}: expected Error::NotFound, got {other:?}"),
        }
    }

    #[track_caller]
    fn conflict<T: Debug>(result: Result<T>, what: &str) {
        match result {
            Err(Error::Conflict(_)) => {}
            other => panic!("{what}: expected Error::Conflict, got {other:?}"),
        }
    }

    #[track_caller]
    fn posted(result: Result<Applied>, what: &str) -> (Message, bool) {
        match ok(result, what) {
            Applied::Posted { message, duplicate } => (message, duplicate),
            other => panic!("{what}: expected Applied::Posted, got {other:?}"),
        }
    }

    #[track_caller]
    fn updated(result: Result<Applied>, what: &str) -> (Message, bool) {
        match ok(result, what) {
            Applied::Updated { message, changed } => (message, changed),
            other => panic!("{what}: expected Applied::Updated, got {other:?}"),
        }
    }

    #[track_caller]
    fn membership(result: Result<Applied>, what: &str) -> (Chat, Option<Message>) {
        match ok(result, what) {
            Applied::Membership { chat, message } => (chat, message),
            other => panic!("{what}: expected Applied::Membership, got {other:?}"),
        }
    }

    /// `(delivered_seq, read_seq, delivered_moved, read_moved)`.
    #[track_caller]
    fn marked(result: Result<Applied>, what: &str) -> (u64, u64, bool, bool) {
        match ok(result, what) {
            Applied::Marked {
                delivered_seq,
                read_seq,
                delivered_moved,
                read_moved,
            } => (delivered_seq, read_seq, delivered_moved, read_moved),
            other => panic!("{what}: expected Applied::Marked, got {other:?}"),
        }
    }

    /// Applies one change and checks that one result came back.
    async fn apply_one(store: &dyn Store, change: Change) -> Result<Applied> {
        let mut results = store.apply(vec![change]).await;
        assert_eq!(
            results.len(),
            1,
            "apply must return one result per change, got {results:?}"
        );
        some(results.pop(), "the one result of apply").map(|c| c.applied)
    }

    /// A text message with a fresh id.
    fn text(
        chat: ChatId,
        sender: &UserId,
        client_msg_id: &str,
        content: &str,
        created_at: Timestamp,
    ) -> NewMessage {
        NewMessage {
            id: MessageId::new(),
            chat_id: chat,
            sender_id: sender.clone(),
            kind: MessageType::Text,
            content: Some(content.to_owned()),
            media: None,
            reply_to: None,
            client_msg_id: Some(client_msg_id.to_owned()),
            system: None,
            created_at,
        }
    }

    /// A system message with a fresh id.
    fn system(chat: ChatId, by: &UserId, event: SystemEvent, created_at: Timestamp) -> NewMessage {
        NewMessage {
            id: MessageId::new(),
            chat_id: chat,
            sender_id: by.clone(),
            kind: MessageType::System,
            content: None,
            media: None,
            reply_to: None,
            client_msg_id: None,
            system: Some(event),
            created_at,
        }
    }

    /// The message that posting `new` must store with `seq`.
    fn stored(new: &NewMessage, seq: u64) -> Message {
        Message {
            id: new.id,
            chat_id: new.chat_id,
            seq,
            updated_seq: seq,
            sender_id: new.sender_id.clone(),
            kind: new.kind,
            content: new.content.clone(),
            media: new.media.clone(),
            reply_to: new.reply_to,
            client_msg_id: new.client_msg_id.clone(),
            created_at: new.created_at,
            edited_at: None,
            deleted: false,
            reactions: Reactions::new(),
            system: new.system.clone(),
        }
    }

    /// Posts `new`, which must be stored as a new message.
    async fn post(store: &dyn Store, new: NewMessage) -> Message {
        let what = format!("posting {:?} by {}", new.client_msg_id, new.sender_id);
        let (message, duplicate) = posted(apply_one(store, Change::Post(new)).await, &what);
        assert!(
            !duplicate,
            "{what}: a first post must have duplicate: false"
        );
        message
    }

    fn edit(chat: ChatId, message: MessageId, content: &str, at: Timestamp) -> Change {
        Change::Edit {
            chat_id: chat,
            message_id: message,
            content: content.to_owned(),
            at,
        }
    }

    fn delete(chat: ChatId, message: MessageId, at: Timestamp) -> Change {
        Change::Delete {
            chat_id: chat,
            message_id: message,
            at,
        }
    }

    fn react_max(
        chat: ChatId,
        message: MessageId,
        user: &UserId,
        emoji: &str,
        add: bool,
        max_distinct: usize,
        at: Timestamp,
    ) -> Change {
        Change::React {
            chat_id: chat,
            message_id: message,
            user_id: user.clone(),
            emoji: emoji.to_owned(),
            add,
            max_distinct,
            at,
        }
    }

    fn react(
        chat: ChatId,
        message: MessageId,
        user: &UserId,
        emoji: &str,
        add: bool,
        at: Timestamp,
    ) -> Change {
        react_max(chat, message, user, emoji, add, 16, at)
    }

    fn add_max(
        chat: ChatId,
        user: &UserId,
        role: Role,
        by: &UserId,
        max_participants: usize,
        at: Timestamp,
    ) -> Change {
        Change::AddParticipant {
            chat_id: chat,
            user_id: user.clone(),
            role,
            by: by.clone(),
            max_participants,
            at,
        }
    }

    fn add(chat: ChatId, user: &UserId, role: Role, by: &UserId, at: Timestamp) -> Change {
        add_max(chat, user, role, by, 1_000, at)
    }

    fn remove(chat: ChatId, user: &UserId, by: &UserId, at: Timestamp) -> Change {
        Change::RemoveParticipant {
            chat_id: chat,
            user_id: user.clone(),
            by: by.clone(),
            at,
        }
    }

    fn set_role(chat: ChatId, user: &UserId, role: Role, by: &UserId, at: Timestamp) -> Change {
        Change::SetRole {
            chat_id: chat,
            user_id: user.clone(),
            role,
            by: by.clone(),
            at,
        }
    }

    fn mark(chat: ChatId, user: &UserId, delivered_up_to: u64, read_up_to: u64) -> Change {
        Change::Mark {
            chat_id: chat,
            user_id: user.clone(),
            delivered_up_to,
            read_up_to,
        }
    }

    fn new_group(members: &[&UserId], created_at: Timestamp) -> NewChat {
        NewChat {
            id: ChatId::new(),
            kind: ChatKind::Group,
            name: Some("group".to_owned()),
            description: None,
            avatar_url: None,
            encryption: Encryption::AtRest,
            participants: members
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    (
                        (*u).clone(),
                        if i == 0 { Role::Admin } else { Role::Member },
                    )
                })
                .collect(),
            created_at,
        }
    }

    fn new_direct(a: &UserId, b: &UserId, created_at: Timestamp) -> NewChat {
        NewChat {
            id: ChatId::new(),
            kind: ChatKind::Direct,
            name: None,
            description: None,
            avatar_url: None,
            encryption: Encryption::AtRest,
            participants: vec![(a.clone(), Role::Member), (b.clone(), Role::Member)],
            created_at,
        }
    }

    /// Creates a group; the first member is its admin, the others members.
    async fn group(store: &dyn Store, members: &[&UserId], created_at: Timestamp) -> Chat {
        let (chat, created) = ok(
            store.create_chat(new_group(members, created_at)).await,
            "create_chat(group)",
        );
        assert!(created, "create_chat of a new group must return true");
        chat
    }

    /// Creates the direct chat of `a` and `b`, which must be new.
    async fn direct(store: &dyn Store, a: &UserId, b: &UserId, created_at: Timestamp) -> Chat {
        let (chat, created) = ok(
            store.create_chat(new_direct(a, b, created_at)).await,
            "create_chat(direct)",
        );
        assert!(created, "create_chat of a new direct chat must return true");
        chat
    }

    async fn get_chat(store: &dyn Store, id: ChatId) -> Chat {
        some(
            ok(store.get_chat(id).await, "get_chat"),
            "get_chat of an existing chat",
        )
    }

    async fn get_message(store: &dyn Store, id: MessageId) -> Message {
        some(
            ok(store.get_message(id).await, "get_message"),
            "get_message of a stored message",
        )
    }

    async fn last_seq(store: &dyn Store, id: ChatId) -> u64 {
        get_chat(store, id).await.last_seq
    }

    #[track_caller]
    fn participant<'a>(chat: &'a Chat, user: &UserId) -> &'a Participant {
        some(
            chat.participant(user),
            &format!("participant {user} of the chat"),
        )
    }

    fn all_history() -> HistoryQuery {
        HistoryQuery {
            before_seq: None,
            after_seq: None,
            from_seq: 0,
            limit: 10_000,
        }
    }

    async fn history_seqs(store: &dyn Store, chat: ChatId, query: HistoryQuery) -> Vec<u64> {
        ok(store.history(chat, query).await, "history")
            .iter()
            .map(|m| m.seq)
            .collect()
    }

    async fn changes_ids(
        store: &dyn Store,
        chat: ChatId,
        after: u64,
        from_seq: u64,
        limit: usize,
    ) -> Vec<(MessageId, u64)> {
        ok(store.changes(chat, after, from_seq, limit).await, "changes")
            .iter()
            .map(|m| (m.id, m.updated_seq))
            .collect()
    }

    fn all_chats() -> ChatListQuery {
        ChatListQuery {
            after: None,
            limit: 1_000,
        }
    }

    async fn list_chat_ids(store: &dyn Store, user: &UserId, query: ChatListQuery) -> Vec<ChatId> {
        ok(store.list_chats(user, query).await, "list_chats")
            .iter()
            .map(|c| c.id)
            .collect()
    }

    /// Sorts chats as `list_chats` must: last_activity, then id, descending.
    fn sort_chats(chats: &mut [Chat]) {
        chats.sort_by_key(|c| Reverse((c.last_activity, c.id)));
    }

    fn reactions(entries: &[(&str, &[&UserId])]) -> Reactions {
        entries
            .iter()
            .map(|(emoji, users)| {
                (
                    (*emoji).to_owned(),
                    users.iter().map(|u| (*u).clone()).collect(),
                )
            })
            .collect()
    }

    /// A report filed at `created_at`, with an id in the same millisecond so
    /// that id order and time order agree (as for ids made at filing time).
    fn report(reporter: &UserId, message: &Message, reason: &str, created_at: Timestamp) -> Report {
        let ms = u64::try_from(created_at.as_millis()).unwrap_or_default();
        Report {
            id: ReportId::from_ulid(Ulid::from_parts(ms, Ulid::new().random())),
            reporter_id: reporter.clone(),
            chat_id: message.chat_id,
            message_id: message.id,
            reported_user_id: message.sender_id.clone(),
            reason: reason.to_owned(),
            content: message.content.clone(),
            status: ReportStatus::Open,
            created_at,
            resolved_at: None,
            resolved_by: None,
            resolution_note: None,
        }
    }

    fn media_record(chat: ChatId, uploader: &UserId, created_at: Timestamp) -> MediaRecord {
        MediaRecord {
            id: MediaId::new(),
            chat_id: chat,
            uploader_id: uploader.clone(),
            mime: "image/png".to_owned(),
            size: 48_213,
            duration_ms: None,
            has_thumbnail: true,
            created_at,
        }
    }

    /// Awaits every task, re-raising the first panic as the case's own.
    async fn join_all<T: Send + 'static>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            match handle.await {
                Ok(v) => out.push(v),
                Err(e) => match e.try_into_panic() {
                    Ok(payload) => std::panic::resume_unwind(payload),
                    Err(e) => panic!("a task of the case failed: {e}"),
                },
            }
        }
        out
    }

    /// A small deterministic generator (xorshift64*), so that concurrent
    /// cases draw the same values on every run.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self((seed.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    // --- chats -----------------------------------------------------------

    /// `create_chat` of a group stores it as given, with founding
    /// participants in order (watermarks and `visible_from_seq` 0,
    /// `joined_at` its creation), `last_seq` 0 and `last_activity` its
    /// creation; `get_chat` returns it, and `None` for an unknown id; two
    /// groups may have the same members.
    pub async fn create_group_chat(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let new = NewChat {
            id: ChatId::new(),
            kind: ChatKind::Group,
            name: Some("Team".to_owned()),
            description: Some("What we do".to_owned()),
            avatar_url: Some("https://example.invalid/team.png".to_owned()),
            encryption: Encryption::E2ee,
            participants: vec![
                (alice.clone(), Role::Admin),
                (bob.clone(), Role::Moderator),
                (carol.clone(), Role::Member),
            ],
            created_at: at(0),
        };
        let founder = |user_id: &UserId, role| Participant {
            user_id: user_id.clone(),
            role,
            joined_at: at(0),
            delivered_seq: 0,
            read_seq: 0,
            visible_from_seq: 0,
            settings: Default::default(),
        };
        let expected = Chat {
            id: new.id,
            kind: ChatKind::Group,
            name: new.name.clone(),
            description: new.description.clone(),
            avatar_url: new.avatar_url.clone(),
            encryption: Encryption::E2ee,
            last_seq: 0,
            last_activity: at(0),
            created_at: at(0),
            participants: vec![
                founder(&alice, Role::Admin),
                founder(&bob, Role::Moderator),
                founder(&carol, Role::Member),
            ],
        };

        let (chat, created) = ok(s.create_chat(new.clone()).await, "create_chat(group)");
        assert!(created, "create_chat of a new group must return true");
        assert_eq!(chat, expected, "create_chat must return the chat as stored");
        assert_eq!(
            ok(s.get_chat(new.id).await, "get_chat"),
            Some(expected),
            "get_chat must return the group with its participants in joining order"
        );
        assert_eq!(
            ok(s.get_chat(ChatId::new()).await, "get_chat(unknown)"),
            None,
            "get_chat of an unknown id must be None"
        );
        assert_eq!(
            ok(s.find_direct_chat(&alice, &bob).await, "find_direct_chat"),
            None,
            "a group is not the direct chat of two of its members"
        );

        let again = group(s, &[&alice, &bob, &carol], at(1)).await;
        assert_ne!(
            again.id, new.id,
            "two groups with the same members are two chats"
        );
        assert_eq!(
            list_chat_ids(s, &alice, all_chats()).await.len(),
            2,
            "both groups must be listed"
        );
    }

    /// A direct chat is unique per unordered pair: creating it again (in
    /// either order, with another id) returns the stored chat and `false`
    /// and stores nothing; `find_direct_chat` finds it in either order.
    pub async fn create_direct_chat_is_unique_per_pair(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let first = new_direct(&alice, &bob, at(0));
        let (chat, created) = ok(s.create_chat(first.clone()).await, "create_chat(direct)");
        assert!(created, "the first direct chat of a pair must be created");
        assert_eq!(chat.id, first.id);
        assert_eq!(chat.kind, ChatKind::Direct);
        assert_eq!(chat.member_ids(), vec![alice.clone(), bob.clone()]);
        assert!(
            chat.participants
                .iter()
                .all(|p| p.role == Role::Member && p.visible_from_seq == 0),
            "direct chat participants are founding members: {chat:?}"
        );

        for (a, b) in [(&alice, &bob), (&bob, &alice)] {
            let second = new_direct(a, b, at(5));
            let (existing, created) = ok(
                s.create_chat(second.clone()).await,
                "create_chat(direct again)",
            );
            assert!(
                !created,
                "creating the direct chat of {a} and {b} again must return false"
            );
            assert_eq!(
                existing, chat,
                "creating it again must return the stored chat"
            );
            assert_eq!(
                ok(s.get_chat(second.id).await, "get_chat"),
                None,
                "creating an existing direct chat must not store the new id"
            );
        }
        for (a, b) in [(&alice, &bob), (&bob, &alice)] {
            assert_eq!(
                ok(s.find_direct_chat(a, b).await, "find_direct_chat"),
                Some(chat.clone()),
                "find_direct_chat({a}, {b}) must find the pair's chat in either order"
            );
        }
        assert_eq!(
            ok(s.find_direct_chat(&alice, &carol).await, "find_direct_chat"),
            None,
            "a pair without a direct chat has none"
        );
        let other = direct(s, &carol, &alice, at(6)).await;
        assert_ne!(other.id, chat.id, "another pair gets its own direct chat");
        assert_eq!(
            list_chat_ids(s, &alice, all_chats()).await.len(),
            2,
            "alice must be in exactly two direct chats"
        );
    }

    /// A direct chat with the same user twice is an error and stores nothing.
    pub async fn direct_chat_with_same_user_twice_is_rejected(store: Arc<dyn Store>) {
        let s = &*store;
        let alice = user("alice");
        let new = new_direct(&alice, &alice, at(0));
        let result = s.create_chat(new.clone()).await;
        assert!(
            result.is_err(),
            "a direct chat of a user with themselves must fail, got {result:?}"
        );
        assert_eq!(ok(s.get_chat(new.id).await, "get_chat"), None);
        assert_eq!(
            ok(s.find_direct_chat(&alice, &alice).await, "find_direct_chat"),
            None
        );
        assert!(list_chat_ids(s, &alice, all_chats()).await.is_empty());
    }

    /// `list_chats` lists only the user's chats, most recent `last_activity`
    /// first, ties by id descending; a post moves its chat to the front.
    pub async fn list_chats_orders_by_last_activity_then_id(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let with_carol = group(s, &[&alice, &carol], at(30)).await;
        let mut chats = vec![
            group(s, &[&alice, &bob], at(10)).await,
            group(s, &[&bob, &alice], at(20)).await,
            group(s, &[&alice], at(20)).await,
            direct(s, &alice, &bob, at(20)).await,
            with_carol.clone(),
        ];
        let others = group(s, &[&bob, &carol], at(40)).await;
        sort_chats(&mut chats);
        let listed = ok(s.list_chats(&alice, all_chats()).await, "list_chats");
        assert_eq!(
            listed, chats,
            "list_chats must return the user's chats by last_activity then id, descending"
        );
        assert_eq!(
            list_chat_ids(s, &carol, all_chats()).await,
            vec![others.id, with_carol.id],
            "list_chats must list only the chats the user takes part in"
        );
        assert!(
            list_chat_ids(s, &user("dave"), all_chats())
                .await
                .is_empty(),
            "a user without chats has none"
        );

        // The oldest chat gets a message: it becomes the most recent.
        let oldest = chats[chats.len() - 1].id;
        post(s, text(oldest, &alice, "c-1", "hi", at(50))).await;
        let listed = ok(s.list_chats(&alice, all_chats()).await, "list_chats");
        assert_eq!(
            listed[0].id, oldest,
            "a post must move its chat to the front"
        );
        assert_eq!(listed[0].last_activity, at(50));
        assert_eq!(listed[0].last_seq, 1);
        assert_eq!(listed.len(), chats.len());
    }

    /// `list_chats` pages: `limit` caps a page, and `after` continues
    /// strictly after a `(last_activity, id)`, also inside ties.
    pub async fn list_chats_pages_with_after_and_limit(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let mut chats = Vec::new();
        for secs in [1, 2, 2, 2, 3, 4, 4] {
            chats.push(group(s, &[&alice, &bob], at(secs)).await);
        }
        sort_chats(&mut chats);
        let expected: Vec<ChatId> = chats.iter().map(|c| c.id).collect();
        assert_eq!(list_chat_ids(s, &alice, all_chats()).await, expected);

        let first = list_chat_ids(
            s,
            &alice,
            ChatListQuery {
                after: None,
                limit: 3,
            },
        )
        .await;
        assert_eq!(first, expected[..3], "limit must cap the page");

        let mut paged = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = ok(
                s.list_chats(&alice, ChatListQuery { after, limit: 3 })
                    .await,
                "list_chats page",
            );
            assert!(page.len() <= 3, "a page must hold at most limit chats");
            let Some(last) = page.last() else { break };
            after = Some((last.last_activity, last.id));
            paged.extend(page.iter().map(|c| c.id));
            pages += 1;
            assert!(pages <= expected.len(), "paging with after must end");
        }
        assert_eq!(
            paged, expected,
            "paging with after must visit every chat once, in order"
        );
        assert_eq!(pages, 3, "7 chats in pages of 3 are 3 pages");

        // Continue from inside a tie: chats[2] is one of three at(2).
        let tie = &chats[3];
        assert_eq!(tie.last_activity, at(2));
        assert_eq!(
            list_chat_ids(
                s,
                &alice,
                ChatListQuery {
                    after: Some((tie.last_activity, tie.id)),
                    limit: 100
                }
            )
            .await,
            expected[4..],
            "after must be exclusive and ordered by (last_activity, id)"
        );
        assert!(
            list_chat_ids(
                s,
                &alice,
                ChatListQuery {
                    after: None,
                    limit: 0
                }
            )
            .await
            .is_empty(),
            "limit 0 returns nothing"
        );
    }

    /// `co_members` lists everyone sharing a chat with the user, each once,
    /// never the user; a removed participant no longer counts.
    pub async fn co_members_are_distinct_and_exclude_self(store: Arc<dyn Store>) {
        let s = &*store;
        let [alice, bob, carol, dave, eve, frank] =
            ["alice", "bob", "carol", "dave", "eve", "frank"].map(user);
        group(s, &[&alice, &bob, &carol], at(0)).await;
        direct(s, &alice, &bob, at(1)).await;
        let g2 = group(s, &[&dave, &alice], at(2)).await;
        direct(s, &eve, &frank, at(3)).await;

        let mut members = ok(s.co_members(&alice).await, "co_members");
        members.sort();
        assert_eq!(
            members,
            vec![bob.clone(), carol.clone(), dave.clone()],
            "co_members must list every co-member once and not the user"
        );
        assert_eq!(ok(s.co_members(&eve).await, "co_members"), vec![frank]);
        assert!(
            ok(s.co_members(&user("zed")).await, "co_members").is_empty(),
            "a user without chats has no co-members"
        );

        membership(
            apply_one(s, remove(g2.id, &dave, &dave, at(4))).await,
            "dave leaves",
        );
        let mut members = ok(s.co_members(&alice).await, "co_members");
        members.sort();
        assert_eq!(
            members,
            vec![bob, carol],
            "a user who left no longer shares the chat"
        );
        assert!(ok(s.co_members(&dave).await, "co_members").is_empty());
    }

    // --- posting ---------------------------------------------------------

    /// Posts take seq 1, 2, 3... per chat (`updated_seq == seq`), store every
    /// field as given, and set the chat's `last_seq` and `last_activity`.
    pub async fn post_assigns_gap_free_seqs(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let other = group(s, &[&alice, &bob], at(0)).await;
        for i in 1..=5_u64 {
            let sender = if i % 2 == 0 { &bob } else { &alice };
            let secs = i64::try_from(i).unwrap_or_default();
            let new = text(
                chat.id,
                sender,
                &format!("c-{i}"),
                &format!("hello {i}"),
                at(secs),
            );
            let message = post(s, new.clone()).await;
            assert_eq!(message.seq, i, "the {i}th post must get seq {i}");
            assert_eq!(
                message,
                stored(&new, i),
                "the stored message must be the posted one with seq == updated_seq"
            );
            assert_eq!(get_message(s, new.id).await, message);
            let c = get_chat(s, chat.id).await;
            assert_eq!(c.last_seq, i, "last_seq must be the latest post's seq");
            assert_eq!(
                c.last_activity,
                at(secs),
                "last_activity must be the post's time"
            );
        }
        let first = post(s, text(other.id, &alice, "o-1", "elsewhere", at(9))).await;
        assert_eq!(first.seq, 1, "each chat has its own counter");
        assert_eq!(last_seq(s, chat.id).await, 5);
        assert_eq!(
            history_seqs(s, chat.id, all_history()).await,
            vec![5, 4, 3, 2, 1]
        );
    }

    /// Media references (all fields) and system events round-trip through a
    /// post; a message without content keeps `None`.
    pub async fn post_round_trips_media_and_system(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let image_id = MediaId::new();
        let image = NewMessage {
            kind: MessageType::Image,
            content: Some("caption".to_owned()),
            media: Some(MediaRef {
                id: image_id,
                mime: "image/png".to_owned(),
                size: 48_213,
                url: format!("/api/v1/chat/media/{image_id}"),
                thumbnail_url: Some(format!("/api/v1/chat/media/{image_id}?thumbnail=true")),
                duration_ms: None,
            }),
            ..text(chat.id, &alice, "img-1", "", at(1))
        };
        let voice_id = MediaId::new();
        let voice = NewMessage {
            kind: MessageType::Voice,
            content: None,
            media: Some(MediaRef {
                id: voice_id,
                mime: "audio/ogg".to_owned(),
                size: 7_001,
                url: format!("/api/v1/chat/media/{voice_id}"),
                thumbnail_url: None,
                duration_ms: Some(3_500),
            }),
            ..text(chat.id, &bob, "voice-1", "", at(2))
        };
        let events = [
            SystemEvent::GroupUpdated {
                name: Some("New name".to_owned()),
                description: None,
                avatar_url: Some("https://example.invalid/x.png".to_owned()),
            },
            SystemEvent::ParticipantAdded {
                user_id: user("carol"),
                role: Role::Moderator,
            },
            SystemEvent::ParticipantRemoved {
                user_id: user("carol"),
            },
            SystemEvent::RoleChanged {
                user_id: bob.clone(),
                role: Role::Admin,
            },
        ];
        let mut news = vec![image, voice];
        news.extend(
            events
                .into_iter()
                .zip(3..)
                .map(|(e, secs)| system(chat.id, &alice, e, at(secs))),
        );
        for (new, seq) in news.into_iter().zip(1..) {
            let message = post(s, new.clone()).await;
            assert_eq!(
                message,
                stored(&new, seq),
                "a post must store kind, content, media and system as given"
            );
            assert_eq!(
                get_message(s, new.id).await,
                message,
                "get_message must return media and system fields as posted"
            );
        }
    }

    /// Posting an existing `(sender, client_msg_id)` again returns the stored
    /// message with `duplicate: true`, stores nothing and takes no seq, also
    /// inside one batch.
    pub async fn post_is_idempotent_per_sender_and_client_id(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let first = post(s, text(chat.id, &alice, "c-1", "first", at(1))).await;

        let retry = text(chat.id, &alice, "c-1", "retried body", at(2));
        let (message, duplicate) = posted(
            apply_one(s, Change::Post(retry.clone())).await,
            "posting a retry",
        );
        assert!(duplicate, "a retry must be reported as duplicate: true");
        assert_eq!(
            message, first,
            "a retry must return the stored message unchanged"
        );
        let c = get_chat(s, chat.id).await;
        assert_eq!(c.last_seq, 1, "a retry must not take a seq");
        assert_eq!(
            c.last_activity,
            at(1),
            "a retry must not move last_activity"
        );
        assert_eq!(
            ok(s.get_message(retry.id).await, "get_message"),
            None,
            "a retry must not store its own id"
        );
        assert_eq!(
            ok(
                s.find_by_client_id(&alice, "c-1").await,
                "find_by_client_id"
            ),
            Some(first.clone())
        );

        let next = post(s, text(chat.id, &alice, "c-2", "second", at(3))).await;
        assert_eq!(next.seq, 2, "the post after a retry must get the next seq");

        // A post and its retry in one batch.
        let new = text(chat.id, &bob, "b-1", "batched", at(4));
        let again = NewMessage {
            id: MessageId::new(),
            ..new.clone()
        };
        let results = s
            .apply(vec![Change::Post(new.clone()), Change::Post(again)])
            .await;
        assert_eq!(results.len(), 2);
        let mut results = results.into_iter().map(|r| r.map(|c| c.applied));
        let (a, dup_a) = posted(some(results.next(), "result 0"), "batched post");
        let (b, dup_b) = posted(some(results.next(), "result 1"), "batched retry");
        assert!(
            !dup_a && dup_b,
            "in a batch, the second post of a pair is the duplicate"
        );
        assert_eq!(a, stored(&new, 3));
        assert_eq!(b, a);
        assert_eq!(last_seq(s, chat.id).await, 3);
        assert_eq!(history_seqs(s, chat.id, all_history()).await, vec![3, 2, 1]);
    }

    /// The same `client_msg_id` from another sender is another message.
    pub async fn post_client_id_is_scoped_per_sender(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let a = post(s, text(chat.id, &alice, "c-1", "from alice", at(1))).await;
        let b = post(s, text(chat.id, &bob, "c-1", "from bob", at(2))).await;
        assert_ne!(a.id, b.id);
        assert_eq!(b.seq, 2, "another sender's client_msg_id is a new message");
        assert_eq!(
            ok(
                s.find_by_client_id(&alice, "c-1").await,
                "find_by_client_id"
            ),
            Some(a)
        );
        assert_eq!(
            ok(s.find_by_client_id(&bob, "c-1").await, "find_by_client_id"),
            Some(b)
        );
    }

    /// Reusing a `(sender, client_msg_id)` in another chat is a `Conflict`
    /// and writes nothing there.
    pub async fn post_reusing_client_id_in_other_chat_conflicts(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let one = group(s, &[&alice, &bob], at(0)).await;
        let two = group(s, &[&alice, &bob], at(0)).await;
        let first = post(s, text(one.id, &alice, "c-1", "in one", at(1))).await;
        let reuse = text(two.id, &alice, "c-1", "in two", at(2));
        conflict(
            apply_one(s, Change::Post(reuse.clone())).await,
            "reusing a client_msg_id in another chat",
        );
        let c = get_chat(s, two.id).await;
        assert_eq!(c.last_seq, 0, "a conflicting post must take no seq");
        assert_eq!(c.last_activity, at(0));
        assert_eq!(ok(s.get_message(reuse.id).await, "get_message"), None);
        assert_eq!(
            ok(
                s.find_by_client_id(&alice, "c-1").await,
                "find_by_client_id"
            ),
            Some(first)
        );
    }

    /// A non-system post from someone not (or no longer) in the chat is
    /// `NotFound` and takes no seq; a system message from a non-participant
    /// is stored.
    pub async fn post_requires_participant_sender(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let intruder = text(chat.id, &mallory, "m-1", "let me in", at(1));
        not_found(
            apply_one(s, Change::Post(intruder.clone())).await,
            "a post by a non-participant",
        );
        assert_eq!(
            last_seq(s, chat.id).await,
            0,
            "a failed post must take no seq"
        );
        assert_eq!(ok(s.get_message(intruder.id).await, "get_message"), None);
        assert_eq!(
            ok(
                s.find_by_client_id(&mallory, "m-1").await,
                "find_by_client_id"
            ),
            None,
            "a failed post must leave no idempotency record"
        );

        let note = system(
            chat.id,
            &mallory,
            SystemEvent::ParticipantRemoved {
                user_id: mallory.clone(),
            },
            at(2),
        );
        let message = post(s, note.clone()).await;
        assert_eq!(
            message,
            stored(&note, 1),
            "a system message needs no participant sender"
        );

        membership(
            apply_one(s, remove(chat.id, &bob, &alice, at(3))).await,
            "removing bob",
        );
        not_found(
            apply_one(
                s,
                Change::Post(text(chat.id, &bob, "b-1", "still here?", at(4))),
            )
            .await,
            "a post by a removed participant",
        );
        assert_eq!(last_seq(s, chat.id).await, 2);
    }

    /// A post into a chat that does not exist is `NotFound` and leaves no
    /// trace (the `client_msg_id` stays free).
    pub async fn post_to_missing_chat_is_not_found(store: Arc<dyn Store>) {
        let s = &*store;
        let alice = user("alice");
        let lost = text(ChatId::new(), &alice, "c-1", "hello?", at(1));
        not_found(
            apply_one(s, Change::Post(lost.clone())).await,
            "a post into a missing chat",
        );
        assert_eq!(ok(s.get_message(lost.id).await, "get_message"), None);
        assert_eq!(
            ok(
                s.find_by_client_id(&alice, "c-1").await,
                "find_by_client_id"
            ),
            None
        );
        let chat = group(s, &[&alice], at(0)).await;
        let message = post(s, text(chat.id, &alice, "c-1", "hello", at(2))).await;
        assert_eq!(
            message.seq, 1,
            "the client_msg_id of a failed post stays free"
        );
    }

    /// `reply_to` must name a message of the same chat: another chat's
    /// message or an unknown id is `NotFound` and takes no seq.
    pub async fn post_reply_to_must_be_in_same_chat(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let one = group(s, &[&alice, &bob], at(0)).await;
        let two = group(s, &[&alice, &bob], at(0)).await;
        let original = post(s, text(one.id, &alice, "c-1", "question", at(1))).await;
        let answer = NewMessage {
            reply_to: Some(original.id),
            ..text(one.id, &bob, "b-1", "answer", at(2))
        };
        let reply = post(s, answer.clone()).await;
        assert_eq!(reply, stored(&answer, 2), "reply_to must round-trip");

        for (target, what) in [
            (original.id, "a reply to another chat's message"),
            (MessageId::new(), "a reply to an unknown message"),
        ] {
            let bad = NewMessage {
                reply_to: Some(target),
                ..text(two.id, &bob, &format!("b-{target}"), "answer", at(3))
            };
            not_found(apply_one(s, Change::Post(bad.clone())).await, what);
            assert_eq!(ok(s.get_message(bad.id).await, "get_message"), None);
        }
        assert_eq!(
            last_seq(s, two.id).await,
            0,
            "failed replies must take no seq"
        );
        assert_eq!(last_seq(s, one.id).await, 2);
    }

    // --- edits, deletions, reactions ---------------------------------------

    /// An edit replaces the content, sets `edited_at`, keeps `seq` and moves
    /// `updated_seq` (and the chat's `last_seq`, `last_activity`).
    pub async fn edit_replaces_content_and_moves_updated_seq(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let m1 = post(s, text(chat.id, &alice, "c-1", "helo", at(1))).await;
        let m2 = post(s, text(chat.id, &bob, "b-1", "hi", at(2))).await;

        let (message, changed) = updated(
            apply_one(s, edit(chat.id, m1.id, "hello", at(3))).await,
            "editing a message",
        );
        assert!(changed, "an edit must report changed: true");
        let expected = Message {
            content: Some("hello".to_owned()),
            edited_at: Some(at(3)),
            updated_seq: 3,
            ..m1.clone()
        };
        assert_eq!(
            message, expected,
            "an edit changes content, edited_at and updated_seq only"
        );
        assert_eq!(get_message(s, m1.id).await, expected);
        assert_eq!(
            get_message(s, m2.id).await,
            m2,
            "other messages stay as they are"
        );
        let c = get_chat(s, chat.id).await;
        assert_eq!(c.last_seq, 3, "an edit takes the next seq");
        assert_eq!(c.last_activity, at(3), "an edit moves last_activity");

        let (again, _) = updated(
            apply_one(s, edit(chat.id, m1.id, "hello!", at(4))).await,
            "editing again",
        );
        assert_eq!((again.seq, again.updated_seq), (1, 4));
        assert_eq!(again.edited_at, Some(at(4)));
        assert_eq!(again.content.as_deref(), Some("hello!"));
        assert_eq!(
            history_seqs(s, chat.id, all_history()).await,
            vec![2, 1],
            "edits add no messages"
        );
    }

    /// Editing a deleted message is a `Conflict` and takes no seq.
    pub async fn edit_of_deleted_message_conflicts(store: Arc<dyn Store>) {
        let s = &*store;
        let alice = user("alice");
        let chat = group(s, &[&alice], at(0)).await;
        let m = post(s, text(chat.id, &alice, "c-1", "oops", at(1))).await;
        updated(apply_one(s, delete(chat.id, m.id, at(2))).await, "deleting");
        conflict(
            apply_one(s, edit(chat.id, m.id, "revived", at(3))).await,
            "editing a deleted message",
        );
        let c = get_chat(s, chat.id).await;
        assert_eq!(c.last_seq, 2, "a failed edit must take no seq");
        assert_eq!(c.last_activity, at(2));
        let tomb = get_message(s, m.id).await;
        assert!(
            tomb.deleted && tomb.content.is_none(),
            "the tombstone stays: {tomb:?}"
        );
    }

    /// Edit, Delete and React of a message through another chat, or of an
    /// unknown message, are `NotFound` and change nothing.
    pub async fn message_changes_in_wrong_chat_are_not_found(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let one = group(s, &[&alice, &bob], at(0)).await;
        let two = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(one.id, &alice, "c-1", "mine", at(1))).await;
        post(s, text(two.id, &alice, "c-2", "other", at(1))).await;
        for (chat, id, whose) in [
            (two.id, m.id, "another chat's message"),
            (one.id, MessageId::new(), "an unknown message"),
        ] {
            not_found(
                apply_one(s, edit(chat, id, "x", at(2))).await,
                &format!("editing {whose}"),
            );
            not_found(
                apply_one(s, delete(chat, id, at(2))).await,
                &format!("deleting {whose}"),
            );
            not_found(
                apply_one(s, react(chat, id, &bob, "👍", true, at(2))).await,
                &format!("reacting to {whose}"),
            );
        }
        assert_eq!(
            get_message(s, m.id).await,
            m,
            "the message must be unchanged"
        );
        assert_eq!(last_seq(s, one.id).await, 1);
        assert_eq!(last_seq(s, two.id).await, 1);
    }

    /// Every kind of change to a chat that does not exist is `NotFound`.
    pub async fn changes_to_missing_chat_are_not_found(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let real = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(real.id, &alice, "c-1", "here", at(1))).await;
        let missing = ChatId::new();
        let changes = vec![
            (
                "Post",
                Change::Post(text(missing, &alice, "c-2", "x", at(2))),
            ),
            ("Edit", edit(missing, m.id, "x", at(2))),
            ("Delete", delete(missing, m.id, at(2))),
            ("React", react(missing, m.id, &alice, "👍", true, at(2))),
            (
                "AddParticipant",
                add(missing, &bob, Role::Member, &alice, at(2)),
            ),
            ("RemoveParticipant", remove(missing, &bob, &alice, at(2))),
            (
                "SetRole",
                set_role(missing, &bob, Role::Admin, &alice, at(2)),
            ),
            (
                "UpdateGroup",
                Change::UpdateGroup {
                    chat_id: missing,
                    patch: GroupPatch {
                        name: Some("x".to_owned()),
                        ..GroupPatch::default()
                    },
                    by: alice.clone(),
                    at: at(2),
                },
            ),
            ("Mark", mark(missing, &alice, 1, 1)),
        ];
        for (name, change) in changes {
            not_found(
                apply_one(s, change).await,
                &format!("{name} in a missing chat"),
            );
        }
        assert_eq!(get_message(s, m.id).await, m);
        assert_eq!(last_seq(s, real.id).await, 1);
    }

    /// A deletion makes a tombstone: content and media `None`, reactions
    /// gone, `deleted`, `seq` kept, `updated_seq` moved.
    pub async fn delete_leaves_tombstone(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let media_id = MediaId::new();
        let new = NewMessage {
            kind: MessageType::Image,
            content: Some("look".to_owned()),
            media: Some(MediaRef {
                id: media_id,
                mime: "image/jpeg".to_owned(),
                size: 1_000,
                url: format!("/api/v1/chat/media/{media_id}"),
                thumbnail_url: None,
                duration_ms: None,
            }),
            ..text(chat.id, &alice, "c-1", "", at(1))
        };
        let m = post(s, new).await;
        updated(
            apply_one(s, react(chat.id, m.id, &bob, "👍", true, at(2))).await,
            "reacting",
        );
        let (tomb, changed) = updated(apply_one(s, delete(chat.id, m.id, at(3))).await, "deleting");
        assert!(changed, "a deletion must report changed: true");
        assert!(tomb.deleted, "a deleted message must be marked deleted");
        assert_eq!(tomb.content, None, "a tombstone has no content");
        assert_eq!(tomb.media, None, "a tombstone has no media");
        assert!(tomb.reactions.is_empty(), "a tombstone has no reactions");
        assert_eq!(
            (tomb.seq, tomb.updated_seq),
            (1, 3),
            "a deletion keeps seq, moves updated_seq"
        );
        assert_eq!(
            (
                tomb.id,
                tomb.chat_id,
                &tomb.sender_id,
                tomb.kind,
                &tomb.client_msg_id,
                tomb.created_at
            ),
            (
                m.id,
                m.chat_id,
                &m.sender_id,
                m.kind,
                &m.client_msg_id,
                m.created_at
            ),
            "a deletion keeps the message's identity"
        );
        assert_eq!(get_message(s, m.id).await, tomb);
        let c = get_chat(s, chat.id).await;
        assert_eq!(c.last_seq, 3);
        assert_eq!(c.last_activity, at(3), "a deletion moves last_activity");
        assert_eq!(
            ok(s.history(chat.id, all_history()).await, "history"),
            vec![tomb],
            "history keeps the tombstone"
        );
    }

    /// Deleting a tombstone again returns it with `changed: false` and takes
    /// no seq.
    pub async fn delete_twice_changes_nothing(store: Arc<dyn Store>) {
        let s = &*store;
        let alice = user("alice");
        let chat = group(s, &[&alice], at(0)).await;
        let m = post(s, text(chat.id, &alice, "c-1", "bye", at(1))).await;
        let (tomb, _) = updated(apply_one(s, delete(chat.id, m.id, at(2))).await, "deleting");
        let (again, changed) = updated(
            apply_one(s, delete(chat.id, m.id, at(3))).await,
            "deleting again",
        );
        assert!(!changed, "deleting a tombstone must report changed: false");
        assert_eq!(again, tomb, "deleting a tombstone must return it unchanged");
        let c = get_chat(s, chat.id).await;
        assert_eq!(c.last_seq, 2, "deleting a tombstone must take no seq");
        assert_eq!(c.last_activity, at(2));
    }

    /// Reactions are added and removed per user and emoji, each change
    /// taking a seq; users are kept in the order they reacted; removing the
    /// last user of an emoji removes the emoji.
    pub async fn react_adds_and_removes_in_order(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
        let m = post(s, text(chat.id, &alice, "c-1", "news", at(1))).await;
        let steps: Vec<(&UserId, &str, bool, Reactions)> = vec![
            (&carol, "👍", true, reactions(&[("👍", &[&carol])])),
            (&alice, "👍", true, reactions(&[("👍", &[&carol, &alice])])),
            (
                &bob,
                "❤️",
                true,
                reactions(&[("👍", &[&carol, &alice]), ("❤️", &[&bob])]),
            ),
            (
                &alice,
                "❤️",
                true,
                reactions(&[("👍", &[&carol, &alice]), ("❤️", &[&bob, &alice])]),
            ),
            (
                &carol,
                "👍",
                false,
                reactions(&[("👍", &[&alice]), ("❤️", &[&bob, &alice])]),
            ),
            (&alice, "👍", false, reactions(&[("❤️", &[&bob, &alice])])),
        ];
        for ((who, emoji, on, expected), secs) in steps.into_iter().zip(2..) {
            let what = format!("{who} {} {emoji}", if on { "adds" } else { "removes" });
            let (message, changed) = updated(
                apply_one(s, react(chat.id, m.id, who, emoji, on, at(secs))).await,
                &what,
            );
            let seq = u64::try_from(secs).unwrap_or_default();
            assert!(changed, "{what}: must report changed: true");
            assert_eq!(
                message.reactions, expected,
                "{what}: reactions must list users in the order they reacted, \
                 without emoji nobody uses"
            );
            assert_eq!(
                (message.seq, message.updated_seq),
                (1, seq),
                "{what}: a reaction moves updated_seq"
            );
            assert_eq!(get_message(s, m.id).await, message);
            let c = get_chat(s, chat.id).await;
            assert_eq!((c.last_seq, c.last_activity), (seq, at(secs)));
        }
        assert_eq!(
            get_message(s, m.id).await.content.as_deref(),
            Some("news"),
            "reactions leave the content alone"
        );
    }

    /// Adding a reaction that exists, or removing one that does not, returns
    /// `changed: false` and takes no seq.
    pub async fn react_duplicates_change_nothing(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(chat.id, &alice, "c-1", "news", at(1))).await;
        let (first, _) = updated(
            apply_one(s, react(chat.id, m.id, &alice, "👍", true, at(2))).await,
            "first reaction",
        );
        for (who, emoji, on, what) in [
            (&alice, "👍", true, "adding the same reaction again"),
            (&bob, "👍", false, "removing a reaction the user never gave"),
            (&alice, "❤️", false, "removing an emoji nobody used"),
        ] {
            let (message, changed) = updated(
                apply_one(s, react(chat.id, m.id, who, emoji, on, at(5))).await,
                what,
            );
            assert!(!changed, "{what}: must report changed: false");
            assert_eq!(message, first, "{what}: must return the message unchanged");
        }
        let c = get_chat(s, chat.id).await;
        assert_eq!(c.last_seq, 2, "reactions that change nothing take no seq");
        assert_eq!(c.last_activity, at(2));
    }

    /// A new distinct emoji on a message that has `max_distinct` already is
    /// a `Conflict` (no seq); more users on an existing emoji are fine.
    pub async fn react_limits_distinct_emoji(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(chat.id, &alice, "c-1", "vote", at(1))).await;
        let r = |who: &UserId, emoji: &str, on: bool, secs| {
            react_max(chat.id, m.id, who, emoji, on, 2, at(secs))
        };
        updated(apply_one(s, r(&alice, "👍", true, 2)).await, "first emoji");
        updated(apply_one(s, r(&alice, "❤️", true, 3)).await, "second emoji");
        conflict(
            apply_one(s, r(&bob, "😂", true, 4)).await,
            "a third distinct emoji with max_distinct 2",
        );
        assert_eq!(
            last_seq(s, chat.id).await,
            3,
            "a refused reaction takes no seq"
        );
        let (message, changed) = updated(
            apply_one(s, r(&bob, "👍", true, 5)).await,
            "an existing emoji",
        );
        assert!(
            changed,
            "another user on an existing emoji is within the limit"
        );
        assert_eq!(
            message.reactions,
            reactions(&[("👍", &[&alice, &bob]), ("❤️", &[&alice])])
        );
        updated(
            apply_one(s, r(&alice, "❤️", false, 6)).await,
            "freeing a slot",
        );
        let (message, _) = updated(apply_one(s, r(&bob, "😂", true, 7)).await, "a freed slot");
        assert_eq!(
            message.reactions,
            reactions(&[("👍", &[&alice, &bob]), ("😂", &[&bob])])
        );
        assert_eq!(message.updated_seq, 6);
    }

    /// Reacting to a deleted message is a `Conflict` and takes no seq.
    pub async fn react_to_deleted_message_conflicts(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(chat.id, &alice, "c-1", "gone soon", at(1))).await;
        let (tomb, _) = updated(apply_one(s, delete(chat.id, m.id, at(2))).await, "deleting");
        conflict(
            apply_one(s, react(chat.id, m.id, &bob, "👍", true, at(3))).await,
            "reacting to a deleted message",
        );
        assert_eq!(last_seq(s, chat.id).await, 2);
        assert_eq!(get_message(s, m.id).await, tomb);
    }

    // --- membership ----------------------------------------------------------

    /// Adding a participant stores a system message (`ParticipantAdded`,
    /// sent by `by`) with the next seq, and sets the newcomer's watermarks
    /// and `visible_from_seq` to that seq.
    pub async fn add_participant_records_system_message(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        post(s, text(chat.id, &alice, "c-1", "before", at(1))).await;
        post(s, text(chat.id, &bob, "b-1", "before", at(2))).await;

        let change = add(chat.id, &carol, Role::Moderator, &alice, at(3));
        let (after, message) = membership(apply_one(s, change.clone()).await, "adding carol");
        let message = some(
            message,
            "adding a participant must return its system message",
        );
        assert_eq!(
            message,
            Message {
                id: message.id,
                chat_id: chat.id,
                seq: 3,
                updated_seq: 3,
                sender_id: alice.clone(),
                kind: MessageType::System,
                content: None,
                media: None,
                reply_to: None,
                client_msg_id: None,
                created_at: at(3),
                edited_at: None,
                deleted: false,
                reactions: Reactions::new(),
                system: change.system_event(),
            },
            "the system message must record ParticipantAdded with the next seq"
        );
        assert_eq!(
            message.system,
            Some(SystemEvent::ParticipantAdded {
                user_id: carol.clone(),
                role: Role::Moderator
            })
        );
        assert_eq!(
            participant(&after, &carol),
            &Participant {
                user_id: carol.clone(),
                role: Role::Moderator,
                joined_at: at(3),
                delivered_seq: 3,
                read_seq: 3,
                visible_from_seq: 3,
                settings: Default::default(),
            },
            "a newcomer's watermarks and visible_from_seq are the system message's seq"
        );
        assert_eq!(
            after.member_ids(),
            vec![alice.clone(), bob.clone(), carol.clone()],
            "participants stay in joining order"
        );
        assert_eq!((after.last_seq, after.last_activity), (3, at(3)));
        assert_eq!(
            get_chat(s, chat.id).await,
            after,
            "get_chat must show the newcomer"
        );
        assert_eq!(get_message(s, message.id).await, message);
        assert_eq!(history_seqs(s, chat.id, all_history()).await, vec![3, 2, 1]);
        assert_eq!(
            list_chat_ids(s, &carol, all_chats()).await,
            vec![chat.id],
            "a newcomer's chats include the chat"
        );
        // Watermarks never move below where they started.
        let (d, r, dm, rm) = marked(apply_one(s, mark(chat.id, &carol, 1, 1)).await, "mark");
        assert_eq!((d, r, dm, rm), (3, 3, false, false));
    }

    /// Adding someone already in the chat is a `Conflict` and takes no seq.
    pub async fn add_participant_twice_conflicts(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        conflict(
            apply_one(s, add(chat.id, &bob, Role::Member, &alice, at(1))).await,
            "adding a founding member again",
        );
        membership(
            apply_one(s, add(chat.id, &carol, Role::Member, &alice, at(2))).await,
            "adding carol",
        );
        conflict(
            apply_one(s, add(chat.id, &carol, Role::Admin, &bob, at(3))).await,
            "adding carol again",
        );
        let c = get_chat(s, chat.id).await;
        assert_eq!(
            (c.last_seq, c.last_activity),
            (1, at(2)),
            "refused adds take no seq"
        );
        assert_eq!(c.participants.len(), 3);
        assert_eq!(participant(&c, &carol).role, Role::Member);
    }

    /// Adding to a chat that has `max_participants` already is a
    /// `Conflict`.
    pub async fn add_participant_respects_capacity(store: Arc<dyn Store>) {
        let s = &*store;
        let [alice, bob, carol, dave, eve] = ["alice", "bob", "carol", "dave", "eve"].map(user);
        let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
        conflict(
            apply_one(s, add_max(chat.id, &dave, Role::Member, &alice, 3, at(1))).await,
            "adding a 4th participant with max_participants 3",
        );
        assert_eq!(last_seq(s, chat.id).await, 0);
        let (after, _) = membership(
            apply_one(s, add_max(chat.id, &dave, Role::Member, &alice, 4, at(2))).await,
            "adding a 4th participant with max_participants 4",
        );
        assert_eq!(after.participants.len(), 4);
        conflict(
            apply_one(s, add_max(chat.id, &eve, Role::Member, &alice, 4, at(3))).await,
            "adding a 5th participant with max_participants 4",
        );
        let c = get_chat(s, chat.id).await;
        assert_eq!((c.last_seq, c.participants.len()), (1, 4));
    }

    /// Removing a participant stores a `ParticipantRemoved` system message
    /// sent by `by` and drops them from the chat; removing someone not in
    /// the chat is `NotFound`.
    pub async fn remove_participant_records_system_message(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
        post(s, text(chat.id, &bob, "b-1", "hi", at(1))).await;
        let change = remove(chat.id, &bob, &alice, at(2));
        let (after, message) = membership(apply_one(s, change.clone()).await, "removing bob");
        let message = some(
            message,
            "removing a participant must return its system message",
        );
        assert_eq!(
            (
                message.seq,
                message.updated_seq,
                &message.sender_id,
                message.kind,
                message.created_at,
                &message.system
            ),
            (
                2,
                2,
                &alice,
                MessageType::System,
                at(2),
                &change.system_event()
            ),
            "the system message must record ParticipantRemoved by the remover"
        );
        assert_eq!(
            after.member_ids(),
            vec![alice.clone(), carol.clone()],
            "the others stay in joining order"
        );
        assert_eq!((after.last_seq, after.last_activity), (2, at(2)));
        assert_eq!(get_chat(s, chat.id).await, after);
        assert!(
            list_chat_ids(s, &bob, all_chats()).await.is_empty(),
            "a removed participant no longer lists the chat"
        );

        not_found(
            apply_one(s, remove(chat.id, &bob, &alice, at(3))).await,
            "removing someone who already left",
        );
        not_found(
            apply_one(s, remove(chat.id, &user("zed"), &alice, at(3))).await,
            "removing someone who never was in",
        );
        assert_eq!(last_seq(s, chat.id).await, 2);

        let (after, message) = membership(
            apply_one(s, remove(chat.id, &carol, &carol, at(4))).await,
            "carol leaves",
        );
        assert_eq!(some(message, "system message").sender_id, carol);
        assert_eq!(after.member_ids(), vec![alice]);
    }

    /// A role change stores a `RoleChanged` system message; setting the
    /// role someone has changes nothing (`message: None`, no seq); a
    /// non-participant is `NotFound`.
    pub async fn set_role_records_system_message(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let change = set_role(chat.id, &bob, Role::Moderator, &alice, at(1));
        let (after, message) = membership(apply_one(s, change.clone()).await, "promoting bob");
        let message = some(message, "a role change must return its system message");
        assert_eq!(
            (
                message.seq,
                &message.sender_id,
                message.kind,
                &message.system
            ),
            (1, &alice, MessageType::System, &change.system_event()),
            "the system message must record RoleChanged"
        );
        assert_eq!(participant(&after, &bob).role, Role::Moderator);
        assert_eq!(after.member_ids(), vec![alice.clone(), bob.clone()]);
        assert_eq!(get_chat(s, chat.id).await, after);

        let (same, message) = membership(
            apply_one(s, set_role(chat.id, &bob, Role::Moderator, &alice, at(2))).await,
            "setting the same role",
        );
        assert_eq!(
            message, None,
            "setting the role someone has must return no message"
        );
        assert_eq!(
            same, after,
            "setting the role someone has must change nothing"
        );
        let c = get_chat(s, chat.id).await;
        assert_eq!((c.last_seq, c.last_activity), (1, at(1)), "and take no seq");

        not_found(
            apply_one(
                s,
                set_role(chat.id, &user("zed"), Role::Admin, &alice, at(3)),
            )
            .await,
            "setting the role of a non-participant",
        );
        assert_eq!(last_seq(s, chat.id).await, 1);
    }

    /// A group update changes the fields that are `Some` (`Some("")` clears
    /// a field to `None`), leaves the others, and stores a `GroupUpdated`
    /// system message.
    pub async fn update_group_patches_fields(store: Arc<dyn Store>) {
        let s = &*store;
        let alice = user("alice");
        let new = NewChat {
            name: Some("Team".to_owned()),
            description: Some("About".to_owned()),
            avatar_url: Some("https://example.invalid/a.png".to_owned()),
            ..new_group(&[&alice], at(0))
        };
        let (chat, _) = ok(s.create_chat(new).await, "create_chat");
        let patches = [
            (
                GroupPatch {
                    name: Some("Renamed".to_owned()),
                    ..GroupPatch::default()
                },
                (
                    Some("Renamed"),
                    Some("About"),
                    Some("https://example.invalid/a.png"),
                ),
            ),
            (
                GroupPatch {
                    description: Some(String::new()),
                    avatar_url: Some("https://example.invalid/b.png".to_owned()),
                    ..GroupPatch::default()
                },
                (Some("Renamed"), None, Some("https://example.invalid/b.png")),
            ),
            (
                GroupPatch {
                    name: Some(String::new()),
                    description: Some("Back".to_owned()),
                    avatar_url: Some(String::new()),
                },
                (None, Some("Back"), None),
            ),
        ];
        for ((patch, (name, description, avatar)), seq) in patches.into_iter().zip(1_u64..) {
            let secs = i64::try_from(seq).unwrap_or_default();
            let change = Change::UpdateGroup {
                chat_id: chat.id,
                patch: patch.clone(),
                by: alice.clone(),
                at: at(secs),
            };
            let what = format!("applying {patch:?}");
            let (after, message) = membership(apply_one(s, change.clone()).await, &what);
            assert_eq!(
                (
                    after.name.as_deref(),
                    after.description.as_deref(),
                    after.avatar_url.as_deref()
                ),
                (name, description, avatar),
                "{what}: None leaves a field, Some(\"\") clears it"
            );
            let message = some(message, "a group update must return its system message");
            assert_eq!(
                (
                    message.seq,
                    &message.sender_id,
                    message.kind,
                    &message.system
                ),
                (seq, &alice, MessageType::System, &change.system_event()),
                "{what}: the system message must record GroupUpdated"
            );
            assert_eq!((after.last_seq, after.last_activity), (seq, at(secs)));
            assert_eq!(get_chat(s, chat.id).await, after);
        }
    }

    // --- watermarks ------------------------------------------------------

    /// Marks move watermarks forward only, report which moved, take no seq
    /// and touch no one else's watermarks; `read_up_to` 0 leaves the read
    /// watermark.
    pub async fn mark_moves_watermarks_forward_only(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        for i in 1..=5 {
            post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
        }
        let steps = [
            ((3, 1), (3, 1, true, true), "a first mark"),
            (
                (2, 0),
                (3, 1, false, false),
                "a mark behind both watermarks",
            ),
            ((3, 1), (3, 1, false, false), "the same mark again"),
            (
                (4, 0),
                (4, 1, true, false),
                "delivered only (read 0 is no change)",
            ),
            ((0, 2), (4, 2, false, true), "read only, behind delivered"),
            ((1, 1), (4, 2, false, false), "a mark behind both, again"),
        ];
        for ((d, r), expected, what) in steps {
            let result = marked(apply_one(s, mark(chat.id, &bob, d, r)).await, what);
            assert_eq!(
                result, expected,
                "{what}: Mark({d}, {r}) must give (delivered, read, delivered_moved, read_moved)"
            );
            let c = get_chat(s, chat.id).await;
            let p = participant(&c, &bob);
            assert_eq!((p.delivered_seq, p.read_seq), (expected.0, expected.1));
            assert_eq!(
                (c.last_seq, c.last_activity),
                (5, at(5)),
                "a mark takes no seq"
            );
            let a = participant(&c, &alice);
            assert_eq!(
                (a.delivered_seq, a.read_seq),
                (0, 0),
                "others' watermarks stay"
            );
        }
    }

    /// Marks are clamped to the chat's `last_seq`.
    pub async fn mark_clamps_to_last_seq(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        assert_eq!(
            marked(
                apply_one(s, mark(chat.id, &bob, 10, 10)).await,
                "mark in empty chat"
            ),
            (0, 0, false, false),
            "in an empty chat watermarks stay at 0"
        );
        for i in 1..=5 {
            post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
        }
        assert_eq!(
            marked(
                apply_one(s, mark(chat.id, &bob, 100, 0)).await,
                "mark beyond"
            ),
            (5, 0, true, false),
            "delivered must be clamped to last_seq"
        );
        assert_eq!(
            marked(
                apply_one(s, mark(chat.id, &bob, 100, 100)).await,
                "mark beyond"
            ),
            (5, 5, false, true),
            "read must be clamped to last_seq"
        );
        post(s, text(chat.id, &alice, "c-6", "msg", at(6))).await;
        assert_eq!(
            marked(
                apply_one(s, mark(chat.id, &bob, u64::MAX, u64::MAX)).await,
                "mark max"
            ),
            (6, 6, true, true)
        );
        let c = get_chat(s, chat.id).await;
        let p = participant(&c, &bob);
        assert_eq!((p.delivered_seq, p.read_seq, c.last_seq), (6, 6, 6));
    }

    /// Reading implies delivery: `delivered_seq >= read_seq` always.
    pub async fn mark_read_implies_delivered(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        for i in 1..=5 {
            post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
        }
        assert_eq!(
            marked(apply_one(s, mark(chat.id, &bob, 0, 3)).await, "read 3"),
            (3, 3, true, true),
            "reading up to 3 must deliver up to 3"
        );
        assert_eq!(
            marked(apply_one(s, mark(chat.id, &bob, 2, 4)).await, "read 4"),
            (4, 4, true, true),
            "reading past delivered must move delivered too"
        );
        let c = get_chat(s, chat.id).await;
        let p = participant(&c, &bob);
        assert_eq!((p.delivered_seq, p.read_seq), (4, 4));
    }

    /// A mark for someone not (or no longer) in the chat is `NotFound`.
    pub async fn mark_by_non_participant_is_not_found(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        post(s, text(chat.id, &alice, "c-1", "msg", at(1))).await;
        not_found(
            apply_one(s, mark(chat.id, &user("mallory"), 1, 1)).await,
            "a mark by a non-participant",
        );
        membership(
            apply_one(s, remove(chat.id, &bob, &bob, at(2))).await,
            "bob leaves",
        );
        not_found(
            apply_one(s, mark(chat.id, &bob, 2, 2)).await,
            "a mark by a former participant",
        );
        assert_eq!(last_seq(s, chat.id).await, 2);
    }

    // --- batches -----------------------------------------------------------

    /// `apply` returns one result per change in order; later changes see
    /// earlier ones; a failing change leaves no trace (no seq) and does not
    /// stop the others; an empty batch returns nothing.
    pub async fn apply_batch_isolates_failures(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let first = text(chat.id, &alice, "c-1", "one", at(1));
        let batch = vec![
            Change::Post(first.clone()),
            Change::Post(text(chat.id, &mallory, "m-1", "intruder", at(2))),
            react(chat.id, first.id, &bob, "👍", true, at(3)),
            edit(chat.id, MessageId::new(), "ghost", at(4)),
            add(chat.id, &bob, Role::Member, &alice, at(5)),
            Change::Post(text(chat.id, &bob, "b-1", "three", at(6))),
            mark(chat.id, &bob, 3, 3),
            Change::Post(NewMessage {
                id: MessageId::new(),
                ..first.clone()
            }),
        ];
        let results = s.apply(batch).await;
        assert_eq!(results.len(), 8, "apply must return one result per change");
        let mut results = results.into_iter().map(|r| r.map(|c| c.applied));
        let mut next = |i: usize| some(results.next(), &format!("result {i}"));

        let (m1, dup) = posted(next(0), "change 0 (post)");
        assert!(!dup);
        assert_eq!(m1.seq, 1);
        not_found(next(1), "change 1 (post by a non-participant)");
        let (reacted, changed) = updated(next(2), "change 2 (react to change 0's message)");
        assert!(changed);
        assert_eq!(
            (reacted.id, reacted.updated_seq),
            (m1.id, 2),
            "the failed change 1 must not take a seq"
        );
        not_found(next(3), "change 3 (edit of an unknown message)");
        conflict(next(4), "change 4 (adding a participant twice)");
        let (m3, _) = posted(next(5), "change 5 (post)");
        assert_eq!(m3.seq, 3, "failed changes 3 and 4 must not take seqs");
        assert_eq!(marked(next(6), "change 6 (mark)"), (3, 3, true, true));
        let (retry, dup) = posted(next(7), "change 7 (retry of change 0)");
        assert!(
            dup,
            "a retry of an earlier change in the batch is a duplicate"
        );
        assert_eq!(retry.id, m1.id);

        let c = get_chat(s, chat.id).await;
        assert_eq!((c.last_seq, c.last_activity), (3, at(6)));
        assert_eq!(c.participants.len(), 2);
        assert_eq!(history_seqs(s, chat.id, all_history()).await, vec![3, 1]);
        assert_eq!(
            ok(
                s.find_by_client_id(&mallory, "m-1").await,
                "find_by_client_id"
            ),
            None,
            "a failed post leaves no trace"
        );
        assert!(
            s.apply(Vec::new()).await.is_empty(),
            "an empty batch returns no results"
        );
        assert_eq!(last_seq(s, chat.id).await, 3);
    }

    // --- reads -------------------------------------------------------------

    /// `history` returns messages newest first within `from_seq <= seq`,
    /// `after_seq < seq < before_seq`, at most `limit`, tombstones
    /// included.
    pub async fn history_returns_newest_first_within_bounds(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let empty = group(s, &[&alice], at(0)).await;
        for i in 1..=10 {
            post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
        }
        let q = |before_seq, after_seq, from_seq, limit| HistoryQuery {
            before_seq,
            after_seq,
            from_seq,
            limit,
        };
        let cases: Vec<(HistoryQuery, Vec<u64>)> = vec![
            (q(None, None, 0, 100), (1..=10).rev().collect()),
            (q(None, None, 0, 3), vec![10, 9, 8]),
            (q(Some(5), None, 0, 100), vec![4, 3, 2, 1]),
            (q(Some(5), None, 0, 2), vec![4, 3]),
            (q(None, Some(7), 0, 100), vec![10, 9, 8]),
            (q(Some(6), Some(2), 0, 100), vec![5, 4, 3]),
            (q(None, None, 4, 100), (4..=10).rev().collect()),
            (q(None, Some(2), 4, 100), (4..=10).rev().collect()),
            (q(None, Some(6), 4, 100), vec![10, 9, 8, 7]),
            (q(Some(6), None, 4, 100), vec![5, 4]),
            (q(Some(6), Some(5), 0, 100), vec![]),
            (q(Some(1), None, 0, 100), vec![]),
            (q(None, Some(10), 0, 100), vec![]),
            (q(None, None, 11, 100), vec![]),
            (q(None, None, 0, 0), vec![]),
        ];
        for (query, expected) in cases {
            assert_eq!(
                history_seqs(s, chat.id, query).await,
                expected,
                "history({query:?}) must return these seqs, newest first"
            );
        }
        let all = ok(s.history(chat.id, all_history()).await, "history");
        for m in &all {
            assert_eq!(
                &get_message(s, m.id).await,
                m,
                "history returns whole messages"
            );
        }

        let (tomb, _) = updated(
            apply_one(s, delete(chat.id, all[5].id, at(20))).await,
            "deleting seq 5",
        );
        let after = ok(
            s.history(chat.id, q(Some(6), Some(4), 0, 100)).await,
            "history",
        );
        assert_eq!(after, vec![tomb], "history keeps tombstones at their seq");
        assert_eq!(
            history_seqs(s, chat.id, all_history()).await.len(),
            10,
            "a deletion adds no message"
        );
        assert!(history_seqs(s, empty.id, all_history()).await.is_empty());
    }

    /// `changes` returns messages with `updated_seq > after` and
    /// `seq >= from_seq` in ascending `updated_seq`, at most `limit`, so an
    /// edit, deletion, reaction or system message shows up after its cursor.
    pub async fn changes_follow_updated_seq(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let mut m = Vec::new();
        for i in 1..=5 {
            m.push(
                post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i)))
                    .await
                    .id,
            );
        }
        let ids = |list: &[(usize, u64)]| -> Vec<(MessageId, u64)> {
            list.iter().map(|(i, u)| (m[*i], *u)).collect()
        };
        assert_eq!(
            changes_ids(s, chat.id, 0, 0, 100).await,
            ids(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)])
        );
        updated(
            apply_one(s, edit(chat.id, m[1], "edited", at(6))).await,
            "edit seq 2",
        );
        assert_eq!(
            changes_ids(s, chat.id, 5, 0, 100).await,
            ids(&[(1, 6)]),
            "an edit of an old message must show up after the cursor"
        );
        assert_eq!(
            changes_ids(s, chat.id, 0, 0, 100).await,
            ids(&[(0, 1), (2, 3), (3, 4), (4, 5), (1, 6)]),
            "changes must be ordered by updated_seq"
        );
        assert_eq!(
            changes_ids(s, chat.id, 3, 0, 100).await,
            ids(&[(3, 4), (4, 5), (1, 6)])
        );
        assert_eq!(
            changes_ids(s, chat.id, 0, 0, 2).await,
            ids(&[(0, 1), (2, 3)]),
            "limit must cap the result"
        );
        assert_eq!(
            changes_ids(s, chat.id, 0, 3, 100).await,
            ids(&[(2, 3), (3, 4), (4, 5)]),
            "from_seq must hide messages older than it, even when edited"
        );
        updated(
            apply_one(s, delete(chat.id, m[3], at(7))).await,
            "delete seq 4",
        );
        let deleted = ok(s.changes(chat.id, 6, 0, 100).await, "changes");
        assert_eq!(deleted.len(), 1);
        assert!(
            deleted[0].id == m[3] && deleted[0].deleted,
            "a deletion must show up as a tombstone after the cursor"
        );
        updated(
            apply_one(s, react(chat.id, m[0], &bob, "👍", true, at(8))).await,
            "react to seq 1",
        );
        assert_eq!(changes_ids(s, chat.id, 7, 0, 100).await, ids(&[(0, 8)]));
        let (_, added) = membership(
            apply_one(s, add(chat.id, &carol, Role::Member, &alice, at(9))).await,
            "adding carol",
        );
        let added = some(added, "system message");
        assert_eq!(
            ok(s.changes(chat.id, 8, 0, 100).await, "changes"),
            vec![added],
            "a membership change must show up as its system message"
        );
        assert!(changes_ids(s, chat.id, 9, 0, 100).await.is_empty());
        assert_eq!(changes_ids(s, chat.id, 0, 0, 100).await.len(), 6);
    }

    /// `unread_count` counts messages with `seq > after_seq` that are not
    /// the user's own, not `system` and not deleted; edits add nothing.
    pub async fn unread_count_counts_visible_messages_from_others(store: Arc<dyn Store>) {
        let s = &*store;
        let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(user);
        let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
        let a1 = post(s, text(chat.id, &alice, "a-1", "1", at(1))).await; // 1
        post(s, text(chat.id, &alice, "a-2", "2", at(2))).await; // 2
        post(s, text(chat.id, &bob, "b-1", "3", at(3))).await; // 3
        let b2 = post(s, text(chat.id, &bob, "b-2", "4", at(4))).await; // 4
        post(s, text(chat.id, &bob, "b-3", "5", at(5))).await; // 5
        membership(
            apply_one(s, add(chat.id, &dave, Role::Member, &bob, at(6))).await,
            "bob adds dave",
        ); // 6, system
        post(s, text(chat.id, &carol, "c-1", "7", at(7))).await; // 7
        updated(
            apply_one(s, delete(chat.id, b2.id, at(8))).await,
            "delete seq 4",
        ); // 8
        updated(
            apply_one(s, edit(chat.id, a1.id, "1!", at(9))).await,
            "edit seq 1",
        ); // 9

        let chat_id = chat.id;
        let count = |who: &UserId, after: u64| {
            let who = who.clone();
            async move { ok(s.unread_count(chat_id, &who, after).await, "unread_count") }
        };
        let cases = [
            (
                &alice,
                0,
                3,
                "bob's 3 and 5, carol's 7 (own, system, deleted excluded)",
            ),
            (&alice, 3, 2, "seq 5 and 7"),
            (&alice, 5, 1, "seq 7"),
            (
                &alice,
                7,
                0,
                "nothing after 7: edits and deletions are not new",
            ),
            (&bob, 0, 3, "alice's 1 and 2, carol's 7"),
            (&bob, 2, 1, "carol's 7"),
            (&carol, 0, 4, "alice's 1, 2 and bob's 3, 5"),
            (&dave, 6, 1, "carol's 7"),
            (&alice, 100, 0, "after the end"),
        ];
        for (who, after, expected, what) in cases {
            assert_eq!(
                count(who, after).await,
                expected,
                "unread_count({who}, after {after}) must be {expected}: {what}"
            );
        }
    }

    /// `find_by_client_id` returns the message as it is now (edited,
    /// deleted), and `None` for another sender or an unknown key.
    pub async fn find_by_client_id_returns_current_message(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(chat.id, &alice, "c-1", "draft", at(1))).await;
        let find = |who: &UserId, key: &str| {
            let (who, key) = (who.clone(), key.to_owned());
            async move { ok(s.find_by_client_id(&who, &key).await, "find_by_client_id") }
        };
        assert_eq!(find(&alice, "c-1").await, Some(m.clone()));
        assert_eq!(
            find(&bob, "c-1").await,
            None,
            "the key belongs to its sender"
        );
        assert_eq!(find(&alice, "c-2").await, None);

        let (edited, _) = updated(
            apply_one(s, edit(chat.id, m.id, "final", at(2))).await,
            "edit",
        );
        assert_eq!(
            find(&alice, "c-1").await,
            Some(edited),
            "must return the edited message"
        );
        let (tomb, _) = updated(apply_one(s, delete(chat.id, m.id, at(3))).await, "delete");
        assert_eq!(
            find(&alice, "c-1").await,
            Some(tomb.clone()),
            "must return the tombstone of a deleted message"
        );
        let (retry, dup) = posted(
            apply_one(
                s,
                Change::Post(text(chat.id, &alice, "c-1", "again", at(4))),
            )
            .await,
            "retry after deletion",
        );
        assert!(dup, "the key of a deleted message stays taken");
        assert_eq!(retry, tomb);
        assert_eq!(last_seq(s, chat.id).await, 3);
    }

    /// `get_message` returns the message as it is now, with its reactions,
    /// and `None` for an unknown id.
    pub async fn get_message_returns_current_state(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        assert_eq!(
            ok(s.get_message(MessageId::new()).await, "get_message"),
            None
        );
        let m = post(s, text(chat.id, &alice, "c-1", "hi", at(1))).await;
        assert_eq!(get_message(s, m.id).await, m);
        let results = s
            .apply(vec![
                react(chat.id, m.id, &bob, "🎉", true, at(2)),
                react(chat.id, m.id, &alice, "🎉", true, at(3)),
                react(chat.id, m.id, &bob, "👀", true, at(4)),
                edit(chat.id, m.id, "hi all", at(5)),
            ])
            .await;
        assert!(
            results.iter().all(Result::is_ok),
            "all changes apply: {results:?}"
        );
        let now = get_message(s, m.id).await;
        assert_eq!(
            now,
            Message {
                content: Some("hi all".to_owned()),
                edited_at: Some(at(5)),
                updated_seq: 5,
                reactions: reactions(&[("🎉", &[&bob, &alice]), ("👀", &[&bob])]),
                ..m
            },
            "get_message must include reactions and the latest edit"
        );
    }

    // --- blocks ------------------------------------------------------------

    /// `set_block` returns whether anything changed: blocking twice or
    /// lifting a block that does not exist changes nothing.
    pub async fn set_block_reports_changes(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let steps = [
            (&alice, &bob, true, true, "blocking"),
            (&alice, &bob, true, false, "blocking again"),
            (
                &bob,
                &alice,
                false,
                false,
                "lifting a block that is the other way round",
            ),
            (&alice, &bob, false, true, "lifting the block"),
            (&alice, &bob, false, false, "lifting it again"),
            (&alice, &bob, true, true, "blocking once more"),
        ];
        for (blocker, blocked, on, changed, what) in steps {
            assert_eq!(
                ok(s.set_block(blocker, blocked, on).await, what),
                changed,
                "{what}: set_block({blocker}, {blocked}, {on}) must return {changed}"
            );
        }
        assert_eq!(
            ok(s.blocked_by_user(&alice).await, "blocked_by_user"),
            vec![bob.clone()]
        );
        assert!(ok(s.blocked_by_user(&bob).await, "blocked_by_user").is_empty());
    }

    /// `blocked_by_user` lists in blocking order (a block lifted and set
    /// again counts from the new time); `blockers_of` lists who blocks a
    /// user.
    pub async fn blocked_by_user_keeps_blocking_order(store: Arc<dyn Store>) {
        let s = &*store;
        let [alice, bob, carol, dave, zed] = ["alice", "bob", "carol", "dave", "zed"].map(user);
        for blocked in [&zed, &bob, &dave, &carol] {
            assert!(ok(s.set_block(&alice, blocked, true).await, "set_block"));
        }
        assert!(ok(s.set_block(&carol, &bob, true).await, "set_block"));
        assert_eq!(
            ok(s.blocked_by_user(&alice).await, "blocked_by_user"),
            vec![zed.clone(), bob.clone(), dave.clone(), carol.clone()],
            "blocked_by_user must list users in the order they were blocked"
        );
        assert!(ok(s.set_block(&alice, &bob, false).await, "unblock"));
        assert!(ok(s.set_block(&alice, &bob, true).await, "block again"));
        assert_eq!(
            ok(s.blocked_by_user(&alice).await, "blocked_by_user"),
            vec![zed.clone(), dave.clone(), carol.clone(), bob.clone()],
            "a block set again comes last"
        );
        let mut blockers = ok(s.blockers_of(&bob).await, "blockers_of");
        blockers.sort();
        assert_eq!(blockers, vec![alice.clone(), carol.clone()]);
        assert_eq!(
            ok(s.blockers_of(&zed).await, "blockers_of"),
            vec![alice.clone()]
        );
        assert!(ok(s.blockers_of(&alice).await, "blockers_of").is_empty());
        assert!(ok(s.blocked_by_user(&bob).await, "blocked_by_user").is_empty());
    }

    /// `is_blocked_either` sees a block in either direction, and stops
    /// seeing it once lifted.
    pub async fn is_blocked_either_checks_both_directions(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let either = |a: &UserId, b: &UserId| {
            let (a, b) = (a.clone(), b.clone());
            async move { ok(s.is_blocked_either(&a, &b).await, "is_blocked_either") }
        };
        assert!(!either(&alice, &bob).await, "nobody blocks anybody yet");
        ok(s.set_block(&alice, &bob, true).await, "set_block");
        assert!(either(&alice, &bob).await, "alice blocks bob");
        assert!(
            either(&bob, &alice).await,
            "the block counts in both directions"
        );
        assert!(!either(&alice, &carol).await && !either(&carol, &bob).await);
        ok(s.set_block(&bob, &alice, true).await, "set_block");
        ok(s.set_block(&alice, &bob, false).await, "lift");
        assert!(either(&alice, &bob).await, "bob still blocks alice");
        ok(s.set_block(&bob, &alice, false).await, "lift");
        assert!(!either(&alice, &bob).await && !either(&bob, &alice).await);
    }

    // --- users ---------------------------------------------------------------

    /// `get_user` is `None` until something is stored about the user; each
    /// setter alone creates the record with defaults for the rest.
    pub async fn get_user_is_none_until_something_is_stored(store: Arc<dyn Store>) {
        let s = &*store;
        let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(user);
        assert_eq!(ok(s.get_user(&alice).await, "get_user"), None);
        ok(s.set_last_seen(&alice, at(1)).await, "set_last_seen");
        assert_eq!(
            ok(s.get_user(&alice).await, "get_user"),
            Some(UserRecord {
                last_seen: Some(at(1)),
                ..UserRecord::new(alice.clone())
            })
        );
        let private = Privacy {
            read_receipts: false,
            typing: true,
            presence: false,
        };
        ok(s.set_privacy(&bob, private).await, "set_privacy");
        assert_eq!(
            ok(s.get_user(&bob).await, "get_user"),
            Some(UserRecord {
                privacy: private,
                ..UserRecord::new(bob.clone())
            })
        );
        ok(
            s.set_suspension(&carol, Some(at(100))).await,
            "set_suspension",
        );
        assert_eq!(
            ok(s.get_user(&carol).await, "get_user"),
            Some(UserRecord {
                suspended_until: Some(at(100)),
                ..UserRecord::new(carol.clone())
            })
        );
        assert_eq!(
            ok(s.get_user(&dave).await, "get_user"),
            None,
            "storing about others stores nothing about dave"
        );
    }

    /// `set_last_seen`, `set_privacy` and `set_suspension` (`Some` and
    /// `None`) each change their own field only.
    pub async fn user_settings_do_not_clobber_each_other(store: Arc<dyn Store>) {
        let s = &*store;
        let alice = user("alice");
        let private = Privacy {
            read_receipts: false,
            typing: false,
            presence: true,
        };
        let record = |last_seen, privacy, suspended_until| UserRecord {
            user_id: alice.clone(),
            last_seen,
            privacy,
            suspended_until,
        };
        let alice_ref = &alice;
        let get = || async move { ok(s.get_user(alice_ref).await, "get_user") };

        ok(s.set_privacy(&alice, private).await, "set_privacy");
        ok(s.set_last_seen(&alice, at(5)).await, "set_last_seen");
        assert_eq!(get().await, Some(record(Some(at(5)), private, None)));
        ok(
            s.set_suspension(&alice, Some(Timestamp::FOREVER)).await,
            "suspend",
        );
        assert_eq!(
            get().await,
            Some(record(Some(at(5)), private, Some(Timestamp::FOREVER)))
        );
        ok(s.set_last_seen(&alice, at(9)).await, "set_last_seen");
        assert_eq!(
            get().await,
            Some(record(Some(at(9)), private, Some(Timestamp::FOREVER))),
            "set_last_seen must keep privacy and suspension"
        );
        ok(
            s.set_privacy(&alice, Privacy::default()).await,
            "set_privacy",
        );
        assert_eq!(
            get().await,
            Some(record(
                Some(at(9)),
                Privacy::default(),
                Some(Timestamp::FOREVER)
            )),
            "set_privacy must keep last_seen and suspension"
        );
        ok(s.set_suspension(&alice, None).await, "lift suspension");
        assert_eq!(
            get().await,
            Some(record(Some(at(9)), Privacy::default(), None)),
            "set_suspension(None) must lift the suspension and keep the rest"
        );
    }

    // --- reports -------------------------------------------------------------

    /// `insert_report` stores a report as given; `get_report` returns it,
    /// and `None` for an unknown id.
    pub async fn insert_and_get_report(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
        let r = report(&alice, &m, "spam", at(2));
        assert_eq!(ok(s.insert_report(r.clone()).await, "insert_report"), r);
        assert_eq!(ok(s.get_report(r.id).await, "get_report"), Some(r.clone()));
        assert_eq!(ok(s.get_report(ReportId::new()).await, "get_report"), None);
        // The evidence survives the message's deletion.
        updated(apply_one(s, delete(chat.id, m.id, at(3))).await, "delete");
        assert_eq!(ok(s.get_report(r.id).await, "get_report"), Some(r));
    }

    /// A second open report by the same reporter of the same message returns
    /// the first and stores nothing; other reporters, and reports after the
    /// first was closed, are new reports.
    pub async fn duplicate_open_report_returns_existing(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
        let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
        let first = report(&alice, &m, "spam", at(2));
        ok(s.insert_report(first.clone()).await, "insert_report");
        let second = report(&alice, &m, "really spam", at(3));
        assert_eq!(
            ok(s.insert_report(second.clone()).await, "insert_report again"),
            first,
            "a second open report of the same message must return the first"
        );
        assert_eq!(ok(s.get_report(second.id).await, "get_report"), None);
        let other = report(&carol, &m, "spam", at(4));
        assert_eq!(
            ok(s.insert_report(other.clone()).await, "insert_report"),
            other
        );
        assert_eq!(ok(s.list_reports(None, 100).await, "list_reports").len(), 2);

        ok(
            s.resolve_report(ReportResolution {
                id: first.id,
                status: ReportStatus::Dismissed,
                by: user("admin"),
                note: None,
                at: at(5),
            })
            .await,
            "resolve_report",
        );
        let third = report(&alice, &m, "it is back", at(6));
        assert_eq!(
            ok(
                s.insert_report(third.clone()).await,
                "insert_report after closing"
            ),
            third,
            "once the first report is closed, a new one is stored"
        );
        assert_eq!(ok(s.list_reports(None, 100).await, "list_reports").len(), 3);
    }

    /// `list_reports` filters by status (all with `None`), oldest first, at
    /// most `limit`.
    pub async fn list_reports_filters_by_status_oldest_first(store: Arc<dyn Store>) {
        let s = &*store;
        let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(user);
        let chat = group(s, &[&alice, &bob, &carol, &dave], at(0)).await;
        let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
        let n = post(s, text(chat.id, &carol, "c-1", "rude", at(2))).await;
        // Filed out of order on purpose: listing must not be insertion order.
        let r3 = report(&dave, &n, "rude", at(30));
        let r1 = report(&alice, &m, "spam", at(10));
        let r4 = report(&alice, &n, "rude", at(40));
        let r2 = report(&carol, &m, "spam", at(20));
        for r in [&r3, &r1, &r4, &r2] {
            ok(s.insert_report(r.clone()).await, "insert_report");
        }
        let resolved = ok(
            s.resolve_report(ReportResolution {
                id: r2.id,
                status: ReportStatus::Resolved,
                by: user("admin"),
                note: None,
                at: at(50),
            })
            .await,
            "resolve_report",
        );
        let dismissed = ok(
            s.resolve_report(ReportResolution {
                id: r4.id,
                status: ReportStatus::Dismissed,
                by: user("admin"),
                note: None,
                at: at(51),
            })
            .await,
            "resolve_report",
        );
        let list = |status: Option<ReportStatus>, limit: usize| async move {
            ok(s.list_reports(status, limit).await, "list_reports")
        };
        assert_eq!(
            list(None, 100).await,
            vec![r1.clone(), resolved.clone(), r3.clone(), dismissed.clone()],
            "list_reports(None) must list every report, oldest first"
        );
        assert_eq!(
            list(None, 2).await,
            vec![r1.clone(), resolved.clone()],
            "limit"
        );
        assert_eq!(
            list(Some(ReportStatus::Open), 100).await,
            vec![r1.clone(), r3],
            "list_reports(Open) must list open reports, oldest first"
        );
        assert_eq!(list(Some(ReportStatus::Open), 1).await, vec![r1]);
        assert_eq!(
            list(Some(ReportStatus::Resolved), 100).await,
            vec![resolved]
        );
        assert_eq!(
            list(Some(ReportStatus::Dismissed), 100).await,
            vec![dismissed]
        );
        assert!(list(None, 0).await.is_empty());
    }

    /// `resolve_report` sets status, `resolved_by`, note and `resolved_at`
    /// once; resolving a closed report is a `Conflict`, an unknown one
    /// `NotFound`.
    pub async fn resolve_report_closes_it_once(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, admin) = (user("alice"), user("bob"), user("admin"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
        let r = report(&alice, &m, "spam", at(2));
        ok(s.insert_report(r.clone()).await, "insert_report");
        let resolution = ReportResolution {
            id: r.id,
            status: ReportStatus::Resolved,
            by: admin.clone(),
            note: Some("warned the sender".to_owned()),
            at: at(3),
        };
        let closed = ok(s.resolve_report(resolution.clone()).await, "resolve_report");
        let expected = Report {
            status: ReportStatus::Resolved,
            resolved_at: Some(at(3)),
            resolved_by: Some(admin.clone()),
            resolution_note: Some("warned the sender".to_owned()),
            ..r.clone()
        };
        assert_eq!(
            closed, expected,
            "resolve_report must set status, by, note and at"
        );
        assert_eq!(
            ok(s.get_report(r.id).await, "get_report"),
            Some(expected.clone())
        );
        conflict(
            s.resolve_report(ReportResolution {
                status: ReportStatus::Dismissed,
                at: at(4),
                ..resolution.clone()
            })
            .await,
            "resolving a closed report",
        );
        assert_eq!(
            ok(s.get_report(r.id).await, "get_report"),
            Some(expected),
            "a refused resolution changes nothing"
        );
        not_found(
            s.resolve_report(ReportResolution {
                id: ReportId::new(),
                ..resolution
            })
            .await,
            "resolving an unknown report",
        );

        let other = report(&bob, &m, "mine", at(5));
        ok(s.insert_report(other.clone()).await, "insert_report");
        let dismissed = ok(
            s.resolve_report(ReportResolution {
                id: other.id,
                status: ReportStatus::Dismissed,
                by: admin.clone(),
                note: None,
                at: at(6),
            })
            .await,
            "dismissing",
        );
        assert_eq!(
            dismissed,
            Report {
                status: ReportStatus::Dismissed,
                resolved_at: Some(at(6)),
                resolved_by: Some(admin),
                resolution_note: None,
                ..other
            }
        );
    }

    // --- media ---------------------------------------------------------------

    /// `insert_media` stores a record that `get_media` returns as given;
    /// an unknown id is `None`.
    pub async fn media_records_round_trip(store: Arc<dyn Store>) {
        let s = &*store;
        let alice = user("alice");
        let chat = group(s, &[&alice], at(0)).await;
        let image = media_record(chat.id, &alice, at(1));
        let voice = MediaRecord {
            id: MediaId::new(),
            mime: "audio/ogg".to_owned(),
            size: 12_345,
            duration_ms: Some(4_200),
            has_thumbnail: false,
            ..media_record(chat.id, &alice, at(2))
        };
        for record in [&image, &voice] {
            ok(s.insert_media(record.clone()).await, "insert_media");
        }
        for record in [&image, &voice] {
            assert_eq!(
                ok(s.get_media(record.id).await, "get_media"),
                Some(record.clone()),
                "get_media must return the record as inserted"
            );
        }
        assert_eq!(ok(s.get_media(MediaId::new()).await, "get_media"), None);
    }

    /// A participant's own settings are stored, replaced whole, survive
    /// watermark moves and new messages, and are refused for outsiders.
    pub async fn participant_settings_round_trip(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let settings_of = |c: &Chat, u: &UserId| c.participant(u).map(|p| p.settings);
        let fresh = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
        assert_eq!(
            settings_of(&fresh, &alice),
            Some(ParticipantSettings::default())
        );
        let muted = ParticipantSettings {
            muted_until: Some(at(99)),
            hidden_seq: Some(0),
        };
        ok(
            s.set_participant_settings(chat.id, &alice, muted).await,
            "set_participant_settings",
        );
        let mark = Change::Mark {
            chat_id: chat.id,
            user_id: alice.clone(),
            delivered_up_to: 0,
            read_up_to: 0,
        };
        let _ = s.apply(vec![mark]).await;
        let after = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
        assert_eq!(
            settings_of(&after, &alice),
            Some(muted),
            "settings are stored"
        );
        assert_eq!(
            settings_of(&after, &bob),
            Some(ParticipantSettings::default()),
            "per participant"
        );
        assert_eq!(after.last_seq, fresh.last_seq, "settings take no seq");
        ok(
            s.set_participant_settings(chat.id, &alice, ParticipantSettings::default())
                .await,
            "set_participant_settings",
        );
        let cleared = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
        assert_eq!(
            settings_of(&cleared, &alice),
            Some(ParticipantSettings::default()),
            "replaced whole"
        );
        not_found(
            s.set_participant_settings(chat.id, &eve, muted).await,
            "settings of a non-participant",
        );
        not_found(
            s.set_participant_settings(ChatId::new(), &alice, muted)
                .await,
            "settings in a missing chat",
        );
    }

    /// Inserting a media record whose id exists is a `Conflict` and keeps
    /// the first record.
    pub async fn duplicate_media_id_conflicts(store: Arc<dyn Store>) {
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let first = media_record(chat.id, &alice, at(1));
        ok(s.insert_media(first.clone()).await, "insert_media");
        let clash = MediaRecord {
            uploader_id: bob,
            size: 1,
            ..first.clone()
        };
        conflict(s.insert_media(clash).await, "inserting a media id twice");
        assert_eq!(ok(s.get_media(first.id).await, "get_media"), Some(first));
    }

    // --- concurrency -----------------------------------------------------

    /// 50 tasks posting 20 messages each into one chat, through separate
    /// `apply` calls, get the seqs 1..=1000 exactly once; each task's seqs
    /// grow; `history` returns all of them.
    pub async fn concurrent_posts_take_unique_gap_free_seqs(store: Arc<dyn Store>) {
        const TASKS: usize = 50;
        const POSTS: usize = 20;
        let s = &*store;
        let users: Vec<UserId> = (0..TASKS).map(|i| user(&format!("u{i:02}"))).collect();
        let refs: Vec<&UserId> = users.iter().collect();
        let chat = group(s, &refs, at(0)).await;
        let barrier = Arc::new(Barrier::new(TASKS));
        let mut handles = Vec::new();
        for (t, sender) in users.iter().cloned().enumerate() {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::with_capacity(POSTS);
                for i in 0..POSTS {
                    let secs = i64::try_from(i + 1).unwrap_or_default();
                    let new = text(
                        chat.id,
                        &sender,
                        &format!("t{t}-{i}"),
                        &format!("{t}/{i}"),
                        at(secs),
                    );
                    let m = post(&*store, new).await;
                    mine.push((m.id, m.seq));
                }
                mine
            }));
        }
        let per_task = join_all(handles).await;
        let mut seqs = Vec::new();
        for (t, mine) in per_task.iter().enumerate() {
            assert!(
                mine.windows(2).all(|w| w[0].1 < w[1].1),
                "task {t}: seqs of one caller's successive posts must grow: {mine:?}"
            );
            seqs.extend(mine.iter().map(|(_, seq)| *seq));
        }
        seqs.sort_unstable();
        let total = u64::try_from(TASKS * POSTS).unwrap_or_default();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "concurrent posts must take every seq from 1 to {total} exactly once"
        );
        assert_eq!(last_seq(s, chat.id).await, total);
        let history = ok(s.history(chat.id, all_history()).await, "history");
        assert_eq!(
            history.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=total).rev().collect::<Vec<_>>(),
            "history must return every concurrent post"
        );
        let stored: HashSet<MessageId> = history.iter().map(|m| m.id).collect();
        assert!(
            per_task.iter().flatten().all(|(id, _)| stored.contains(id)),
            "every acknowledged post must be in history"
        );
    }

    /// Many tasks posting the same `(sender, client_msg_id)` at once store
    /// exactly one message: all see the same message, exactly one sees
    /// `duplicate: false`, and one seq is taken.
    pub async fn concurrent_retries_store_one_message(store: Arc<dyn Store>) {
        const ROUNDS: usize = 5;
        const RACERS: usize = 16;
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        for round in 0..ROUNDS {
            let barrier = Arc::new(Barrier::new(RACERS));
            let secs = i64::try_from(round + 1).unwrap_or_default();
            let attempts: Vec<NewMessage> = (0..RACERS)
                .map(|r| {
                    text(
                        chat.id,
                        &alice,
                        &format!("retry-{round}"),
                        &format!("attempt {r}"),
                        at(secs),
                    )
                })
                .collect();
            let mut handles = Vec::new();
            for new in attempts.iter().cloned() {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                handles.push(tokio::spawn(async move {
                    barrier.wait().await;
                    posted(
                        apply_one(&*store, Change::Post(new)).await,
                        "a concurrent retry",
                    )
                }));
            }
            let results = join_all(handles).await;
            let winner = &results[0].0;
            assert!(
                results.iter().all(|(m, _)| m == winner),
                "round {round}: every racer must see the one stored message"
            );
            assert_eq!(
                results.iter().filter(|(_, dup)| !dup).count(),
                1,
                "round {round}: exactly one racer must see duplicate: false"
            );
            let round_seq = u64::try_from(round + 1).unwrap_or_default();
            assert_eq!(
                winner.seq, round_seq,
                "round {round}: one seq taken per round"
            );
            let original = some(
                attempts.iter().find(|a| a.id == winner.id),
                "the stored message must be one of the attempts",
            );
            assert_eq!(winner, &stored(original, round_seq));
            assert_eq!(
                ok(
                    s.find_by_client_id(&alice, &format!("retry-{round}")).await,
                    "find"
                ),
                Some(winner.clone())
            );
        }
        let rounds = u64::try_from(ROUNDS).unwrap_or_default();
        assert_eq!(last_seq(s, chat.id).await, rounds);
        assert_eq!(
            history_seqs(s, chat.id, all_history()).await,
            (1..=rounds).rev().collect::<Vec<_>>(),
            "racing retries must store one message per key"
        );
    }

    /// Concurrent marks with random (rising) values never move a watermark
    /// back: every caller sees watermarks at least as far as it asked
    /// (clamped) and at least as far as any mark returned before it started,
    /// and they end at the maximum.
    pub async fn concurrent_marks_never_move_backwards(store: Arc<dyn Store>) {
        const TASKS: u64 = 16;
        const MARKS: usize = 25;
        const LAST: u64 = 100;
        let s = &*store;
        let (alice, bob) = (user("alice"), user("bob"));
        let chat = group(s, &[&alice, &bob], at(0)).await;
        let posts = (1..=LAST)
            .map(|i| {
                let secs = i64::try_from(i).unwrap_or_default();
                Change::Post(text(chat.id, &alice, &format!("c-{i}"), "msg", at(secs)))
            })
            .collect();
        let results = s.apply(posts).await;
        assert!(
            results.iter().all(Result::is_ok),
            "posting 100 messages in a batch"
        );
        assert_eq!(last_seq(s, chat.id).await, LAST);

        let barrier = Arc::new(Barrier::new(usize::try_from(TASKS).unwrap_or(1)));
        // The highest watermarks any mark has returned so far: a mark that
        // starts after they were returned must see at least them.
        let floor = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let (store, barrier, bob) = (Arc::clone(&store), Arc::clone(&barrier), bob.clone());
            let floor = Arc::clone(&floor);
            handles.push(tokio::spawn(async move {
                let mut rng = Rng::new(t);
                let (mut max_d, mut max_r) = (0, 0);
                barrier.wait().await;
                for step in 0..MARKS {
                    // Everyone ramps up together with jitter, so that marks
                    // race at a moving frontier instead of saturating at
                    // last_seq at once; the last steps ask beyond it.
                    let base = u64::try_from(step).unwrap_or_default() * (LAST + 10)
                        / u64::try_from(MARKS).unwrap_or(1);
                    let d = base + rng.below(12);
                    let r = if rng.below(3) == 0 {
                        0
                    } else {
                        (base + rng.below(12)).saturating_sub(6)
                    };
                    let (floor_d, floor_r) = (floor.0.load(SeqCst), floor.1.load(SeqCst));
                    let (dd, rr, _, _) = marked(
                        apply_one(&*store, mark(chat.id, &bob, d, r)).await,
                        "a concurrent mark",
                    );
                    assert!(
                        rr <= dd && dd <= LAST,
                        "watermarks must keep read <= delivered <= last_seq, got ({dd}, {rr})"
                    );
                    assert!(
                        dd >= d.min(LAST) && rr >= r.min(LAST) && dd >= r.min(LAST),
                        "Mark({d}, {r}) returned ({dd}, {rr}): below what was asked"
                    );
                    assert!(
                        dd >= floor_d && rr >= floor_r,
                        "watermarks moved backwards: ({floor_d}, {floor_r}) had been returned \
                         before Mark({d}, {r}) started, which returned ({dd}, {rr})"
                    );
                    floor.0.fetch_max(dd, SeqCst);
                    floor.1.fetch_max(rr, SeqCst);
                    (max_d, max_r) = (max_d.max(d), max_r.max(r));
                }
                (max_d, max_r)
            }));
        }
        let maxima = join_all(handles).await;
        let max_r = maxima.iter().map(|m| m.1).max().unwrap_or(0).min(LAST);
        let max_d = maxima
            .iter()
            .map(|m| m.0)
            .max()
            .unwrap_or(0)
            .min(LAST)
            .max(max_r);
        let c = get_chat(s, chat.id).await;
        let p = participant(&c, &bob);
        assert_eq!(
            (p.delivered_seq, p.read_seq),
            (max_d, max_r),
            "after concurrent marks the watermarks must be the (clamped) maxima"
        );
        assert_eq!(c.last_seq, LAST, "marks take no seq");
    }

    /// Concurrent `create_chat` of the same direct pair (in both orders)
    /// creates exactly one chat, which every caller gets.
    pub async fn concurrent_direct_chat_creation_yields_one_chat(store: Arc<dyn Store>) {
        const PAIRS: usize = 4;
        const RACERS: usize = 8;
        let s = &*store;
        let barrier = Arc::new(Barrier::new(PAIRS * RACERS));
        let mut handles = Vec::new();
        for p in 0..PAIRS {
            let (a, b) = (user(&format!("a{p}")), user(&format!("b{p}")));
            for r in 0..RACERS {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                let new = if r % 2 == 0 {
                    new_direct(&a, &b, at(0))
                } else {
                    new_direct(&b, &a, at(0))
                };
                handles.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let (chat, created) =
                        ok(store.create_chat(new).await, "a concurrent create_chat");
                    (p, chat.id, created)
                }));
            }
        }
        let results = join_all(handles).await;
        for p in 0..PAIRS {
            let mine: Vec<_> = results.iter().filter(|r| r.0 == p).collect();
            assert_eq!(
                mine.iter().filter(|r| r.2).count(),
                1,
                "pair {p}: exactly one concurrent create_chat must create the chat"
            );
            let id = mine[0].1;
            assert!(
                mine.iter().all(|r| r.1 == id),
                "pair {p}: every caller must get the same chat"
            );
            let (a, b) = (user(&format!("a{p}")), user(&format!("b{p}")));
            assert_eq!(
                ok(s.find_direct_chat(&b, &a).await, "find_direct_chat").map(|c| c.id),
                Some(id)
            );
            assert_eq!(
                list_chat_ids(s, &a, all_chats()).await,
                vec![id],
                "pair {p}: only one chat may exist"
            );
        }
    }

    /// Concurrent adds to a group never exceed `max_participants`.
    pub async fn concurrent_adds_respect_capacity(store: Arc<dyn Store>) {
        const CANDIDATES: usize = 20;
        const MAX: usize = 10;
        let s = &*store;
        let alice = user("alice");
        let chat = group(s, &[&alice], at(0)).await;
        let barrier = Arc::new(Barrier::new(CANDIDATES));
        let mut handles = Vec::new();
        for i in 0..CANDIDATES {
            let (store, barrier, alice) = (Arc::clone(&store), Arc::clone(&barrier), alice.clone());
            let newcomer = user(&format!("n{i:02}"));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let result = apply_one(
                    &*store,
                    add_max(chat.id, &newcomer, Role::Member, &alice, MAX, at(1)),
                )
                .await;
                match result {
                    Ok(applied) => {
                        membership(Ok(applied), "a concurrent add");
                        true
                    }
                    Err(Error::Conflict(_)) => false,
                    Err(e) => panic!("a concurrent add must succeed or be a Conflict, got {e:?}"),
                }
            }));
        }
        let added = join_all(handles).await.into_iter().filter(|a| *a).count();
        assert_eq!(
            added,
            MAX - 1,
            "concurrent adds must fill the group exactly to max_participants"
        );
        let c = get_chat(s, chat.id).await;
        assert_eq!(
            c.participants.len(),
            MAX,
            "the group must hold max_participants"
        );
        let expected_seq = u64::try_from(MAX - 1).unwrap_or_default();
        assert_eq!(c.last_seq, expected_seq, "refused adds take no seq");
        assert_eq!(
            history_seqs(s, chat.id, all_history()).await,
            (1..=expected_seq).rev().collect::<Vec<_>>()
        );
    }

    /// Concurrent reactions with distinct emoji never exceed
    /// `max_distinct`.
    pub async fn concurrent_reactions_respect_max_distinct(store: Arc<dyn Store>) {
        const USERS: usize = 12;
        const MAX: usize = 5;
        let s = &*store;
        let users: Vec<UserId> = (0..USERS).map(|i| user(&format!("u{i:02}"))).collect();
        let refs: Vec<&UserId> = users.iter().collect();
        let chat = group(s, &refs, at(0)).await;
        let m = post(s, text(chat.id, &users[0], "c-1", "pick one", at(1))).await;
        let barrier = Arc::new(Barrier::new(USERS));
        let mut handles = Vec::new();
        for (i, who) in users.iter().cloned().enumerate() {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let change = react_max(chat.id, m.id, &who, &format!("e{i}"), true, MAX, at(2));
                match apply_one(&*store, change).await {
                    Ok(applied) => updated(Ok(applied), "a concurrent reaction").1,
                    Err(Error::Conflict(_)) => false,
                    Err(e) => {
                        panic!("a concurrent reaction must apply or be a Conflict, got {e:?}")
                    }
                }
            }));
        }
        let applied = join_all(handles).await.into_iter().filter(|a| *a).count();
        assert_eq!(
            applied, MAX,
            "exactly max_distinct distinct emoji may be added"
        );
        let now = get_message(s, m.id).await;
        assert_eq!(now.reactions.len(), MAX);
        let expected_seq = 1 + u64::try_from(MAX).unwrap_or_default();
        assert_eq!(now.updated_seq, expected_seq);
        assert_eq!(
            last_seq(s, chat.id).await,
            expected_seq,
            "refused reactions take no seq"
        );
    }

    /// Concurrent posts, edits, reactions and deletions in one chat each
    /// take their own seq: `last_seq` counts them, and no two messages share
    /// a seq or an `updated_seq`.
    pub async fn concurrent_mixed_changes_take_distinct_seqs(store: Arc<dyn Store>) {
        const TASKS: usize = 8;
        let s = &*store;
        let users: Vec<UserId> = (0..=TASKS).map(|i| user(&format!("u{i:02}"))).collect();
        let refs: Vec<&UserId> = users.iter().collect();
        let chat = group(s, &refs, at(0)).await;
        let shared = post(s, text(chat.id, &users[0], "shared", "react here", at(1))).await;
        let barrier = Arc::new(Barrier::new(TASKS));
        let mut handles = Vec::new();
        for who in &users[1..] {
            let (store, barrier, who) = (Arc::clone(&store), Arc::clone(&barrier), who.clone());
            handles.push(tokio::spawn(async move {
                let s = &*store;
                barrier.wait().await;
                let own = post(s, text(chat.id, &who, "own", "mine", at(2))).await;
                let mut seqs = vec![own.seq];
                let changes = [
                    edit(chat.id, own.id, "mine, edited", at(3)),
                    react(chat.id, shared.id, &who, "👍", true, at(4)),
                    react(chat.id, own.id, &who, "🎉", true, at(5)),
                    delete(chat.id, own.id, at(6)),
                ];
                for change in changes {
                    let (message, changed) =
                        updated(apply_one(s, change).await, "a concurrent change");
                    assert!(changed, "every concurrent change here changes something");
                    seqs.push(message.updated_seq);
                }
                assert!(
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    "one caller's successive changes must take growing seqs: {seqs:?}"
                );
                seqs
            }));
        }
        let taken: Vec<u64> = join_all(handles).await.into_iter().flatten().collect();
        let total = 1 + u64::try_from(taken.len()).unwrap_or_default();
        assert_eq!(
            last_seq(s, chat.id).await,
            total,
            "last_seq must count every change"
        );
        let mut unique: Vec<u64> = taken.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            taken.len(),
            "no seq may be taken twice: {taken:?}"
        );
        assert!(unique.iter().all(|seq| (2..=total).contains(seq)));

        let messages = ok(s.changes(chat.id, 0, 0, 1_000).await, "changes");
        assert_eq!(messages.len(), TASKS + 1);
        let seqs: HashSet<u64> = messages.iter().map(|m| m.seq).collect();
        let updated_seqs: HashSet<u64> = messages.iter().map(|m| m.updated_seq).collect();
        assert_eq!(
            seqs.len(),
            messages.len(),
            "no two messages may share a seq"
        );
        assert_eq!(
            updated_seqs.len(),
            messages.len(),
            "no two messages may share an updated_seq"
        );
        assert!(
            messages
                .windows(2)
                .all(|w| w[0].updated_seq < w[1].updated_seq),
            "changes must be in ascending updated_seq"
        );
        let shared_now = get_message(s, shared.id).await;
        let thumbs: BTreeMap<&str, usize> = shared_now
            .reactions
            .iter()
            .map(|(e, us)| (e.as_str(), us.len()))
            .collect();
        assert_eq!(
            thumbs,
            BTreeMap::from([("👍", TASKS)]),
            "every concurrent reaction must be kept once"
        );
        assert!(
            messages
                .iter()
                .filter(|m| m.id != shared.id)
                .all(|m| m.deleted),
            "every own message was deleted"
        );
    }
}

#[cfg(test)]
mod memory_store {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::{Fixture, store_suite};
    use crate::MemoryStore;

    async fn setup() -> Fixture {
        Fixture::new(Arc::new(MemoryStore::new()))
    }

    crate::store_conformance_tests!(setup);

    #[test]
    fn cases_are_listed_once() {
        let mut names = store_suite::CASES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), store_suite::CASES.len());
    }

    /// Sets its flag when dropped.
    struct Guard(Arc<AtomicBool>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn fixture_drops_store_then_guard() {
        let dropped = Arc::new(AtomicBool::new(false));
        let store: Arc<dyn crate::Store> = Arc::new(MemoryStore::new());
        let weak = Arc::downgrade(&store);
        let fixture = Fixture::with_guard(store, Guard(Arc::clone(&dropped)));
        let seen = Arc::new(AtomicBool::new(false));
        let seen_in_case = Arc::clone(&seen);
        let flag = Arc::clone(&dropped);
        fixture
            .run("probe", move |store| async move {
                assert!(!flag.load(Ordering::SeqCst), "guard alive during the case");
                drop(store);
                seen_in_case.store(true, Ordering::SeqCst);
            })
            .await;
        assert!(seen.load(Ordering::SeqCst), "the case ran");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the guard is dropped after run"
        );
        assert!(weak.upgrade().is_none(), "the store is dropped after run");
    }
}

// --- Bus ---------------------------------------------------------------------

pub mod bus;
pub mod engine_suite;

pub use bus::{BusFixture, Cluster, RecordingSink, bus_suite};
