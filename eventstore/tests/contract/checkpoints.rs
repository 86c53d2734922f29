//! Named readers' checkpoints.

use switchboard_eventstore::EventStore;

use super::support::*;

async fn checkpoint<S: EventStore>(store: &S, name: &str) -> Option<u64> {
    guard_await(store.checkpoint(name)).await.unwrap()
}

pub async fn missing_checkpoint_is_none<S: EventStore>(store: S) {
    assert_eq!(checkpoint(&store, "projection-users").await, None);
    guard_await(store.save_checkpoint("projection-other", 3)).await.unwrap();
    assert_eq!(checkpoint(&store, "projection-users").await, None);
}

pub async fn checkpoint_saved_and_overwritten<S: EventStore>(store: S) {
    let name = "projection-users";
    guard_await(store.save_checkpoint(name, 0)).await.unwrap();
    assert_eq!(checkpoint(&store, name).await, Some(0));
    guard_await(store.save_checkpoint(name, 42)).await.unwrap();
    assert_eq!(checkpoint(&store, name).await, Some(42));
    guard_await(store.save_checkpoint(name, 1 << 40)).await.unwrap();
    assert_eq!(checkpoint(&store, name).await, Some(1 << 40));
    // A reader may go back (a rebuild): the last save wins.
    guard_await(store.save_checkpoint(name, 7)).await.unwrap();
    assert_eq!(checkpoint(&store, name).await, Some(7));
}

pub async fn checkpoints_are_independent<S: EventStore>(store: S) {
    let names = ["a", "b", "a-b", "outbox", "Stra\u{df}e \u{1F600}"];
    for (i, name) in names.iter().enumerate() {
        guard_await(store.save_checkpoint(name, i as u64 * 10)).await.unwrap();
    }
    guard_await(store.save_checkpoint("b", 99)).await.unwrap();
    let got: Vec<Option<u64>> = {
        let mut got = Vec::new();
        for name in names {
            got.push(checkpoint(&store, name).await);
        }
        got
    };
    assert_eq!(got, [Some(0), Some(99), Some(20), Some(30), Some(40)]);
    // Checkpoints are not events.
    assert_eq!(head(&store).await, 0);
    assert_eq!(all_events(&store).await, []);
}
