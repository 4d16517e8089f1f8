//! The [`KeyStore`] conformance suite's fixture and macro.
//!
//! [`keystore_suite`](super::keystore_suite) holds one public async function
//! per rule of the [`KeyStore`] contract (see the trait's `# Contract`
//! section). Each takes a fresh, empty key store and panics with a message
//! naming the broken rule.
//!
//! A key store crate runs the whole suite against its real backend with
//! [`keystore_conformance_tests!`](crate::keystore_conformance_tests), which
//! expands into one `#[tokio::test]` per case:
//!
//! ```ignore
//! // chat-keystore-foo/tests/conformance.rs
//! use std::sync::Arc;
//!
//! use chat_core::testing::KeyStoreFixture;
//!
//! async fn setup() -> KeyStoreFixture {
//!     let dir = tempfile::tempdir().expect("temp dir");
//!     let keys = FooKeyStore::open(dir.path().join("keys.db")).await.expect("open");
//!     // The key store is dropped first, then the temp dir.
//!     KeyStoreFixture::with_guard(Arc::new(keys), dir)
//! }
//!
//! chat_core::keystore_conformance_tests!(setup);
//! ```

use std::{any::Any, fmt, future::Future, sync::Arc};

use super::CASE_TIMEOUT;
use crate::keystore::KeyStore;

/// A key store under test, and what must live as long as it does (see
/// [`Fixture`](super::Fixture), its counterpart for stores).
pub struct KeyStoreFixture {
    /// The key store under test. Declared before `guard`, so dropped
    /// before it.
    pub store: Arc<dyn KeyStore>,
    guard: Option<Box<dyn Any + Send>>,
}

impl KeyStoreFixture {
    /// A fixture for a key store that needs no cleanup.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self { store, guard: None }
    }

    /// A fixture whose `guard` (a temp dir, a database handle) is dropped
    /// after the key store, when the case is over.
    pub fn with_guard(store: Arc<dyn KeyStore>, guard: impl Any + Send) -> Self {
        Self {
            store,
            guard: Some(Box::new(guard)),
        }
    }

    /// Runs one case (a function of
    /// [`keystore_suite`](super::keystore_suite)) against the key store,
    /// failing it if it takes longer than [`CASE_TIMEOUT`], then drops the
    /// key store and then the guard.
    pub async fn run<F, Fut>(self, name: &str, case: F)
    where
        F: FnOnce(Arc<dyn KeyStore>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let store = Arc::clone(&self.store);
        if tokio::time::timeout(CASE_TIMEOUT, case(store))
            .await
            .is_err()
        {
            panic!(
                "key store conformance case `{name}` did not finish within {CASE_TIMEOUT:?} \
                 (a deadlock in the key store?)"
            );
        }
        drop(self);
    }
}

impl fmt::Debug for KeyStoreFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStoreFixture")
            .field("store", &self.store)
            .field("guard", &self.guard.as_ref().map(|_| ".."))
            .finish()
    }
}

/// What a key store conformance setup returns: a [`KeyStoreFixture`], or
/// `Option<KeyStoreFixture>` where `None` skips the case (a backend that is
/// unreachable and not required; the setup prints why).
pub trait IntoKeyStoreFixture {
    /// The fixture, or `None` to skip.
    fn into_fixture(self) -> Option<KeyStoreFixture>;
}

impl IntoKeyStoreFixture for KeyStoreFixture {
    fn into_fixture(self) -> Option<KeyStoreFixture> {
        Some(self)
    }
}

impl IntoKeyStoreFixture for Option<KeyStoreFixture> {
    fn into_fixture(self) -> Option<KeyStoreFixture> {
        self
    }
}

/// Expands into one `#[tokio::test]` per case of
/// [`keystore_suite`](crate::testing::keystore_suite), each run on a fresh
/// [`KeyStoreFixture`](crate::testing::KeyStoreFixture).
///
/// The argument is an async function (or any expression callable with no
/// arguments that returns a future) producing a `KeyStoreFixture`, or an
/// `Option` of one where `None` skips the case:
///
/// ```ignore
/// async fn setup() -> chat_core::testing::KeyStoreFixture {
///     chat_core::testing::KeyStoreFixture::new(std::sync::Arc::new(
///         chat_core::keystore::MemoryKeyStore::new(),
///     ))
/// }
///
/// chat_core::keystore_conformance_tests!(setup);
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features (as a dev-dependency). Arms starting with `@` are internal.
#[macro_export]
macro_rules! keystore_conformance_tests {
    (@list $($then:tt)*) => {
        $crate::keystore_conformance_tests! { @$($then)* [
            user_key_is_none_until_put,
            put_if_absent_stores_the_key,
            put_if_absent_keeps_the_first_key,
            keys_round_trip_byte_exact,
            keys_are_kept_per_user,
            replace_swaps_when_current_matches,
            replace_refuses_a_stale_current,
            replace_never_creates_a_key,
            delete_removes_the_key,
            delete_of_a_missing_key_is_false,
            put_after_delete_stores_a_new_key,
            list_pages_in_byte_order_of_user_ids,
            list_starts_after_a_missing_user,
            list_with_limit_zero_is_empty,
            check_is_none_until_put,
            put_check_if_absent_keeps_the_first,
            replace_check_is_compare_and_swap,
            concurrent_puts_store_one_key,
            concurrent_replaces_have_one_winner,
            concurrent_check_puts_store_one,
            data_keys_are_written_once_per_epoch,
            latest_data_key_is_the_highest_epoch_of_that_sender,
            data_keys_outlive_their_user_key,
        ] }
    };
    (@names [$($case:ident),* $(,)?]) => {
        /// The names of all cases, in the order the suite lists them (the
        /// names of the tests that
        /// [`keystore_conformance_tests!`](crate::keystore_conformance_tests)
        /// generates).
        pub const CASES: &[&str] = &[$(::core::stringify!($case)),*];
    };
    (@tests $setup:expr; [$($case:ident),* $(,)?]) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) =
                    $crate::testing::IntoKeyStoreFixture::into_fixture(($setup)().await)
                else {
                    // The setup skipped the case and said why.
                    return;
                };
                fixture
                    .run(
                        ::core::stringify!($case),
                        $crate::testing::keystore_suite::$case,
                    )
                    .await;
            }
        )*
    };
    ($setup:expr $(,)?) => {
        $crate::keystore_conformance_tests! { @list tests $setup; }
    };
}

#[cfg(test)]
mod memory_key_store {
    use std::sync::Arc;

    use super::KeyStoreFixture;
    use crate::{keystore::MemoryKeyStore, testing::keystore_suite};

    async fn setup() -> KeyStoreFixture {
        KeyStoreFixture::new(Arc::new(MemoryKeyStore::new()))
    }

    crate::keystore_conformance_tests!(setup);

    #[test]
    fn cases_are_listed_once() {
        let mut names = keystore_suite::CASES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), keystore_suite::CASES.len());
    }
}
