//! Payloads may hold personal data: `Debug` shows their size, never their content.

use bytes::Bytes;
use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, Snapshot};

use super::support::*;

const SECRET: &str = "4929-1234-5678-9012";
const EMAIL: &str = "ada.secret@example.org";

pub async fn debug_does_not_show_payloads<S: EventStore>(store: S) {
    let s = stream("private");
    let event = NewEvent::raw("CARD_ADDED", 1, format!(r#"{{"card":"{SECRET}"}}"#))
        .with_metadata(&serde_json::json!({ "user": EMAIL }))
        .unwrap();
    for shown in [format!("{event:?}"), format!("{event:#?}")] {
        assert!(
            !shown.contains(SECRET) && !shown.contains(EMAIL),
            "NewEvent shows its payload: {shown}"
        );
        assert!(shown.contains("CARD_ADDED"), "but it does show what it is: {shown}");
    }

    guard_await(store.append(&s, ExpectedVersion::NoStream, vec![event]))
        .await
        .unwrap();
    let recorded = stream_events(&store, &s).await.remove(0);
    for shown in [
        format!("{recorded:?}"),
        format!("{recorded:#?}"),
        format!("{:?}", all_events(&store).await),
    ] {
        assert!(
            !shown.contains(SECRET) && !shown.contains(EMAIL),
            "Recorded shows its payload: {shown}"
        );
        assert!(shown.contains("CARD_ADDED"), "{shown}");
    }

    let snapshot = Snapshot {
        stream: s.clone(),
        revision: 0,
        schema: "card:v1".into(),
        data: Bytes::from(format!("[\"{SECRET}\"]")),
    };
    guard_await(store.save_snapshot(snapshot)).await.unwrap();
    let loaded = guard_await(store.load_snapshot(&s)).await.unwrap();
    let shown = format!("{loaded:?}");
    assert!(!shown.contains(SECRET), "Snapshot shows its state: {shown}");
}
