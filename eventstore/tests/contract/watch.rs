//! `head` and `watch_head`: the committed head, and the same as it moves.

use switchboard_eventstore::{EventStore, ExpectedVersion};

use super::support::*;

pub async fn head_of_empty_store_is_zero<S: EventStore>(store: S) {
    assert_eq!(head(&store).await, 0);
    assert_eq!(*store.watch_head().borrow(), 0);
}

pub async fn watch_head_starts_at_current_head<S: EventStore>(store: S) {
    seed(&store, &stream("a"), 3).await;
    seed(&store, &stream("b"), 2).await;
    let rx = store.watch_head();
    assert_eq!(*rx.borrow(), 5);
    assert_eq!(head(&store).await, 5);
}

pub async fn watch_head_sees_an_append<S: EventStore>(store: S) {
    let s = stream("watched");
    let mut rx = store.watch_head();
    assert_eq!(*rx.borrow_and_update(), 0);
    let appended = guard_await(store.append(&s, ExpectedVersion::NoStream, events(0, 2)))
        .await
        .unwrap();
    guard_await(rx.changed())
        .await
        .expect("the head's sender lives as long as the store");
    assert_eq!(*rx.borrow_and_update(), appended.position);
    assert_eq!(appended.position, 2);

    // Waiting first, then appending from another task.
    let writer = {
        let (store, s) = (store.clone(), s.clone());
        tokio::spawn(async move { store.append(&s, ExpectedVersion::Exact(1), events(2, 3)).await })
    };
    guard_await(rx.changed()).await.unwrap();
    let seen = *rx.borrow_and_update();
    // The change is announced once the events are readable.
    let readable = positions(&guard_await(store.read_all(2, 100)).await.unwrap());
    assert!(
        readable.contains(&seen),
        "the head moved to {seen} but only {readable:?} are readable"
    );
    let appended = guard_await(writer).await.unwrap().unwrap();
    assert_eq!(appended.position, 5);
    assert_eq!(seen, 5, "one append moves the head once, to its last event");
}

pub async fn watch_head_sees_an_append_through_a_clone<S: EventStore>(store: S) {
    let mut rx = store.watch_head();
    let clone = store.clone();
    let appended = guard_await(clone.append(stream("c"), ExpectedVersion::Any, events(0, 4)))
        .await
        .unwrap();
    guard_await(rx.wait_for(|h| *h == appended.position)).await.unwrap();
    // A receiver from the clone, made after, starts there.
    assert_eq!(*clone.watch_head().borrow(), 4);
}
