//! Snapshots: one per stream, never replaced by an older one, gone with the stream.

use bytes::Bytes;
use switchboard_eventstore::{EventStore, ExpectedVersion, Snapshot};

use super::support::*;

fn snapshot(stream: &str, revision: u64, data: &str) -> Snapshot {
    Snapshot {
        stream: stream.into(),
        revision,
        schema: "user:v3:9f2c".into(),
        data: Bytes::from(data.to_owned()),
    }
}

async fn load<S: EventStore>(store: &S, stream: &str) -> Option<Snapshot> {
    guard_await(store.load_snapshot(stream)).await.unwrap()
}

pub async fn missing_snapshot_is_none<S: EventStore>(store: S) {
    let s = stream("s");
    assert_eq!(load(&store, &s).await, None);
    seed(&store, &s, 2).await;
    assert_eq!(load(&store, &s).await, None, "events are no snapshot");
}

pub async fn snapshot_saved_and_loaded<S: EventStore>(store: S) {
    let (s, other) = (stream("s"), stream("other"));
    seed(&store, &s, 3).await;
    let saved = snapshot(&s, 2, "{ \"name\": \"Ada\",\n \"visits\": 3 }");
    guard_await(store.save_snapshot(saved.clone())).await.unwrap();
    assert_eq!(
        load(&store, &s).await,
        Some(saved.clone()),
        "every field, data byte for byte"
    );
    assert_eq!(load(&store, &other).await, None);
    let theirs = snapshot(&other, 0, "{}");
    guard_await(store.save_snapshot(theirs.clone())).await.unwrap();
    assert_eq!(load(&store, &s).await, Some(saved));
    assert_eq!(load(&store, &other).await, Some(theirs));
    assert_eq!(head(&store).await, 3, "snapshots are not events");
}

pub async fn newer_snapshot_replaces_older<S: EventStore>(store: S) {
    let s = stream("s");
    guard_await(store.save_snapshot(snapshot(&s, 2, r#"{"v":2}"#)))
        .await
        .unwrap();
    let newer = Snapshot {
        schema: "user:v4:0000".into(),
        ..snapshot(&s, 5, r#"{"v":5}"#)
    };
    guard_await(store.save_snapshot(newer.clone())).await.unwrap();
    assert_eq!(load(&store, &s).await, Some(newer));
    // The same revision again (code changed, say): replaced as well.
    let same = snapshot(&s, 5, r#"{"v":"5 again"}"#);
    guard_await(store.save_snapshot(same.clone())).await.unwrap();
    assert_eq!(load(&store, &s).await, Some(same));
}

pub async fn older_snapshot_does_not_replace_newer<S: EventStore>(store: S) {
    let s = stream("s");
    let newer = snapshot(&s, 8, r#"{"v":8}"#);
    guard_await(store.save_snapshot(newer.clone())).await.unwrap();
    guard_await(store.save_snapshot(snapshot(&s, 7, r#"{"v":7}"#)))
        .await
        .unwrap();
    guard_await(store.save_snapshot(snapshot(&s, 0, r#"{"v":0}"#)))
        .await
        .unwrap();
    assert_eq!(load(&store, &s).await, Some(newer));
}

pub async fn tombstone_removes_snapshot<S: EventStore>(store: S) {
    let (s, other) = (stream("s"), stream("other"));
    seed(&store, &s, 2).await;
    guard_await(store.save_snapshot(snapshot(&s, 1, "{}"))).await.unwrap();
    guard_await(store.save_snapshot(snapshot(&other, 4, "{}")))
        .await
        .unwrap();
    guard_await(store.tombstone(&s, ExpectedVersion::Exact(1)))
        .await
        .unwrap();
    assert_eq!(load(&store, &s).await, None);
    assert_eq!(
        load(&store, &other).await,
        Some(snapshot(&other, 4, "{}")),
        "other streams keep theirs"
    );
}
