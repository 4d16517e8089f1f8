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
//!
//! Likewise [`keystore_suite`] for the [`KeyStore`](crate::keystore::KeyStore)
//! (with [`keystore_conformance_tests!`](crate::keystore_conformance_tests)
//! and [`KeyStoreFixture`]) and [`bus_suite`] for the [`Bus`](crate::Bus).

use std::{any::Any, fmt, future::Future, sync::Arc, time::Duration};

use crate::store::Store;

/// For the tests of a SQL store's `audit_log` table, below the [`Store`]
/// trait (which has no way to rewrite an entry): the insert of one entry,
/// then the statements the table must refuse, being append-only, and the
/// pseudonymization it must allow.
pub const AUDIT_LOG_SQL: (&str, &[&str], &str) = (
    "INSERT INTO audit_log (id, at, actor_id, action, target_type, target_id) \
     VALUES ('01J', 1, 'root', 'suspend_user', 'user', 'bob')",
    &[
        "DELETE FROM audit_log",
        "UPDATE audit_log SET note = 'rewritten'",
        "UPDATE audit_log SET action = 'erase_user'",
        "UPDATE audit_log SET at = 2",
    ],
    "UPDATE audit_log SET actor_id = 'x', target_id = 'y'",
);

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
            set_retention_records_system_message,
            retention_chats_page_in_id_order,
            expired_messages_stop_at_the_first_new_one,
            retention_watermark_moves_forward_only,
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
            audit_entries_round_trip,
            audit_pages_newest_first_without_gaps,
            audit_filters_by_actor_and_action,
            pseudonymize_audit_replaces_the_user_only,
            media_records_round_trip,
            duplicate_media_id_conflicts,
            media_attaches_once,
            media_detaches_only_from_its_message,
            delete_media_returns_the_record,
            unattached_media_lists_abandoned_uploads_oldest_first,
            concurrent_attaches_of_one_upload_accept_one,
            participant_settings_round_trip,
            participants_are_silenced_apart_from_their_settings,
            reports_keep_the_type_and_media_of_the_message,
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
            stored_texts_page_in_id_order,
            replace_texts_only_where_unchanged,
            meta_values_round_trip,
            key_packages_are_handed_out_once_oldest_first,
            key_packages_per_device_are_bounded,
            concurrent_claims_never_share_a_key_package,
            mls_commits_take_the_current_epoch_only,
            concurrent_mls_commits_for_one_epoch_accept_one,
            mls_commit_with_membership_is_one_change,
            device_keys_are_pinned_by_the_first,
            erasure_finds_a_users_messages_reactions_and_uploads,
            hold_reports_keeps_open_evidence_until_resolved,
            erase_user_rows_removes_the_users_rows,
            leaving_a_direct_chat_frees_the_pair,
            checkin_answers_are_one_per_user,
            checkin_and_resource_messages_round_trip,
            stats_count_days_users_and_sessions,
            receipts_time_first_delivery_and_read,
            stats_time_first_replies_and_weekly_retention,
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
pub mod store_suite;

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

/// The same suite through [`EncryptedStore`](crate::store::EncryptedStore):
/// sealing and opening is invisible to every rule of the contract.
#[cfg(test)]
mod encrypted_memory_store {
    use std::sync::Arc;

    use super::Fixture;
    use crate::{
        MemoryStore,
        clock::SystemClock,
        crypto::MasterKey,
        keystore::{Keyring, KeyringConfig, MemoryKeyStore},
        store::EncryptedStore,
    };

    async fn setup() -> Fixture {
        let master = MasterKey::generate().unwrap_or_else(|e| panic!("master key: {e}"));
        let keyring = Keyring::new(
            master,
            Arc::new(MemoryKeyStore::new()),
            Arc::new(SystemClock),
            KeyringConfig::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("keyring: {e}"));
        let store = EncryptedStore::new(Arc::new(MemoryStore::new()), Arc::new(keyring));
        Fixture::new(Arc::new(store))
    }

    crate::store_conformance_tests!(setup);
}

// --- KeyStore ----------------------------------------------------------------

mod keystore;
pub mod keystore_suite;

pub use keystore::{IntoKeyStoreFixture, KeyStoreFixture};

// --- Bus ---------------------------------------------------------------------

pub mod bus;
pub mod engine_suite;

// --- Media -------------------------------------------------------------------

pub mod media;

pub use bus::{BusFixture, Cluster, RecordingSink, bus_suite};
