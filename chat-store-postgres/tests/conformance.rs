//! The `Store` conformance suite of `chat-core`, every case against a fresh
//! database of the machine's PostgreSQL (see `common`).
//!
//! `chat_core::store_conformance_tests!` cannot skip a case, and a case
//! must be skipped (not run against something else) when PostgreSQL is
//! unreachable. So this file expands the same cases itself, and
//! `every_case_of_the_suite_runs` checks that the list is the suite's
//! whole list, in its order: a case added to the suite fails that test
//! until it is added here.

mod common;

use std::sync::Arc;

use chat_core::testing::{Fixture, store_suite};

use crate::common::{TestDb, small_pool};

/// A fresh store in a fresh database, which the fixture drops after the
/// store; `None` to skip the case.
async fn setup() -> Option<Fixture> {
    let db = TestDb::create().await?;
    let store = db.store(small_pool()).await;
    Some(Fixture::with_guard(Arc::new(store), db))
}

macro_rules! postgres_conformance_tests {
    ($($case:ident),* $(,)?) => {
        /// The cases this file runs, in order.
        const RUN: &[&str] = &[$(::core::stringify!($case)),*];

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = setup().await else {
                    return;
                };
                fixture
                    .run(::core::stringify!($case), store_suite::$case)
                    .await;
            }
        )*
    };
}

#[test]
fn every_case_of_the_suite_runs() {
    assert_eq!(
        RUN,
        store_suite::CASES,
        "tests/conformance.rs must list every case of chat_core's store suite, in its order"
    );
}

postgres_conformance_tests!(
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
);
