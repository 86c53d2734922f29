//! The contract every `EventStore` backend must keep, run against each of them: the same
//! cases, stamped out once per backend by `contract!`.
//!
//! A backend's fixture gives a fresh, empty store per test (and a guard kept alive until the
//! test ends, such as the SQLite file's temporary directory), or `None` to skip the test (the
//! PostgreSQL one when no server is configured: it has already said why).

mod contract {
    pub mod append;
    pub mod checkpoints;
    pub mod concurrency;
    pub mod debug;
    pub mod expected;
    pub mod idempotency;
    pub mod multi;
    pub mod reads;
    pub mod snapshots;
    pub mod support;
    pub mod tombstone;
    pub mod truncate;
    pub mod typed;
    pub mod validation;
    pub mod watch;
}

#[cfg(feature = "postgres")]
#[path = "common/postgres.rs"]
mod pg_common;

/// Stamps out one `#[tokio::test]` per contract case for the backend made by `$make`, an
/// expression of a future of `Option<(store, guard)>`.
macro_rules! contract {
    ($make:expr) => {
        contract! {
            @cases $make;
            single: [
                append::append_to_new_stream_numbers_revisions_and_positions,
                append::append_continues_revisions_and_positions,
                append::appended_revision_is_the_next_exact_expectation,
                append::data_and_metadata_round_trip_byte_for_byte,
                append::read_all_and_read_stream_return_the_same_record,
                append::clones_share_one_store,
                expected::any_on_missing_stream_succeeds,
                expected::any_on_existing_stream_succeeds,
                expected::no_stream_on_missing_stream_succeeds,
                expected::no_stream_on_existing_stream_fails,
                expected::stream_exists_on_missing_stream_fails,
                expected::stream_exists_on_existing_stream_succeeds,
                expected::exact_on_missing_stream_fails,
                expected::exact_matching_revision_succeeds,
                expected::exact_older_revision_fails,
                expected::exact_newer_revision_fails,
                expected::every_expectation_on_deleted_stream_is_stream_deleted,
                expected::failed_append_writes_nothing,
                expected::stream_state_of_missing_stream_is_no_stream,
                expected::stream_state_after_appends_is_at_last_revision,
                expected::stream_state_after_tombstone_is_deleted,
                idempotency::retry_returns_original_result_and_writes_nothing,
                idempotency::retry_with_stale_or_other_expectations_succeeds,
                idempotency::retry_of_a_single_event,
                idempotency::retry_of_a_prefix_writes_nothing,
                idempotency::id_stored_in_another_stream_is_duplicate_event,
                idempotency::id_stored_elsewhere_in_same_stream_is_duplicate_event,
                idempotency::stored_id_then_new_id_is_refused,
                idempotency::new_id_then_stored_id_is_duplicate_event,
                idempotency::same_id_twice_in_one_append_is_refused,
                idempotency::same_id_in_two_streams_of_one_multi_append_is_refused,
                idempotency::retry_after_tombstone_is_stream_deleted,
                multi::multi_append_returns_results_in_order_with_contiguous_positions,
                multi::multi_append_with_one_wrong_version_writes_nothing,
                multi::multi_append_with_a_deleted_stream_writes_nothing,
                multi::multi_append_with_an_invalid_append_writes_nothing,
                multi::multi_append_of_the_same_stream_twice_is_refused,
                multi::multi_append_retried_returns_original_results,
                reads::read_forwards_from_zero,
                reads::read_forwards_from_the_middle,
                reads::read_forwards_with_limit,
                reads::read_with_limit_zero_is_empty,
                reads::read_forwards_past_the_end_is_empty,
                reads::read_backwards_from_the_end,
                reads::read_backwards_from_a_revision,
                reads::read_backwards_with_limit,
                reads::read_backwards_from_past_the_end,
                reads::read_of_missing_stream_is_empty,
                reads::read_stream_returns_only_its_own_events,
                reads::read_all_from_the_start,
                reads::read_all_after_a_position,
                reads::read_all_with_limit,
                reads::read_all_past_the_head_is_empty,
                reads::read_all_interleaves_streams_in_position_order,
                reads::read_all_pages_gaplessly_over_many_appends,
                watch::head_of_empty_store_is_zero,
                watch::watch_head_starts_at_current_head,
                watch::watch_head_sees_an_append,
                watch::watch_head_sees_an_append_through_a_clone,
                truncate::truncate_removes_earlier_events_and_keeps_later_ones,
                truncate::truncate_keeps_revisions_and_stream_state,
                truncate::truncate_past_the_end_empties_the_stream_but_keeps_it,
                truncate::truncate_of_missing_stream_is_ok,
                truncate::truncate_leaves_other_streams_and_head_alone,
                tombstone::tombstone_removes_events_from_read_all,
                tombstone::read_of_tombstoned_stream_is_stream_deleted,
                tombstone::append_to_tombstoned_stream_is_stream_deleted,
                tombstone::tombstone_twice_is_stream_deleted,
                tombstone::tombstone_with_wrong_expectation_fails_and_keeps_the_stream,
                tombstone::tombstone_of_never_written_stream,
                tombstone::tombstone_leaves_other_streams_alone,
                checkpoints::missing_checkpoint_is_none,
                checkpoints::checkpoint_saved_and_overwritten,
                checkpoints::checkpoints_are_independent,
                snapshots::missing_snapshot_is_none,
                snapshots::snapshot_saved_and_loaded,
                snapshots::newer_snapshot_replaces_older,
                snapshots::older_snapshot_does_not_replace_newer,
                snapshots::tombstone_removes_snapshot,
                validation::empty_stream_name_is_invalid,
                validation::too_long_stream_name_is_invalid,
                validation::stream_name_with_nul_is_invalid,
                validation::empty_event_name_is_invalid,
                validation::too_long_event_name_is_invalid,
                validation::data_that_is_not_json_is_invalid,
                validation::data_that_is_not_utf8_is_invalid,
                validation::metadata_that_is_not_json_is_invalid,
                validation::append_without_events_is_invalid,
                validation::unicode_stream_names_work,
                validation::one_mib_event_round_trips,
                typed::typed_event_round_trips,
                typed::upcast_chain_decodes_stored_old_versions,
                typed::unknown_newer_version_is_refused,
                typed::wrong_event_name_is_refused,
                debug::debug_does_not_show_payloads,
            ];
            multi_thread: [
                concurrency::concurrent_appends_to_many_streams_are_gapless,
                concurrency::concurrent_reader_sees_every_event_once_in_order,
                concurrency::head_never_runs_ahead_of_readable_events,
                concurrency::racing_appends_to_one_stream_keep_revisions_gapless,
                concurrency::racing_creations_of_one_stream_have_one_winner,
                concurrency::concurrent_retries_of_one_append_store_it_once,
            ];
        }
    };
    (@cases $make:expr; single: [$($m:ident :: $case:ident),* $(,)?]; multi_thread: [$($mm:ident :: $mcase:ident),* $(,)?];) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::contract::support::run($make.await, $crate::contract::$m::$case).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $mcase() {
                $crate::contract::support::run($make.await, $crate::contract::$mm::$mcase).await;
            }
        )*
    };
}

mod memory {
    use switchboard_eventstore::MemoryStore;

    contract!(async { Some((MemoryStore::new(), ())) });
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use switchboard_eventstore::SqliteStore;

    /// The store in a fresh temporary directory, which lives as long as the test.
    async fn store() -> Option<(SqliteStore, tempfile::TempDir)> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(dir.path().join("events.db")).expect("the SQLite store opens");
        Some((store, dir))
    }

    contract!(store());
}

#[cfg(feature = "postgres")]
mod postgres {
    contract!(async { crate::pg_common::store().await.map(|store| (store, ())) });
}
