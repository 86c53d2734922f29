//! Typed events through a store: encoded by `NewEvent::new`, decoded by `Recorded::decode`,
//! older stored versions upcast.

use serde::{Deserialize, Serialize};
use switchboard_eventstore::{Error, EventStore, ExpectedVersion, NewEvent, StoredEvent, upcast};

use super::support::*;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}
impl StoredEvent for OrderPlaced {
    const NAME: &'static str = "ORDER_PLACED";
    const VERSION: u32 = 4;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CustomerV1 {
    name: String,
}
impl StoredEvent for CustomerV1 {
    const NAME: &'static str = "CUSTOMER_REGISTERED";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CustomerV2 {
    first: String,
    last: String,
}
impl From<CustomerV1> for CustomerV2 {
    fn from(v1: CustomerV1) -> Self {
        let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
        CustomerV2 {
            first: first.into(),
            last: last.into(),
        }
    }
}
impl StoredEvent for CustomerV2 {
    const NAME: &'static str = "CUSTOMER_REGISTERED";
    const VERSION: u32 = 2;
    fn upcast(version: u32, data: &[u8]) -> switchboard_eventstore::Result<Self> {
        upcast::from::<CustomerV1, Self>(version, data)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Customer {
    first: String,
    last: String,
    email: Option<String>,
}
impl From<CustomerV2> for Customer {
    fn from(v2: CustomerV2) -> Self {
        Customer {
            first: v2.first,
            last: v2.last,
            email: None,
        }
    }
}
impl StoredEvent for Customer {
    const NAME: &'static str = "CUSTOMER_REGISTERED";
    const VERSION: u32 = 3;
    fn upcast(version: u32, data: &[u8]) -> switchboard_eventstore::Result<Self> {
        upcast::from::<CustomerV2, Self>(version, data)
    }
}

pub async fn typed_event_round_trips<S: EventStore>(store: S) {
    let s = stream("order");
    let placed = OrderPlaced {
        order: 7,
        lines: vec![("t\u{e9}".into(), 2), ("mug".into(), 1)],
        note: None,
    };
    let new = NewEvent::new(&placed).unwrap();
    assert_eq!((new.name.as_str(), new.version), ("ORDER_PLACED", 4));
    guard_await(store.append(&s, ExpectedVersion::NoStream, vec![new.clone()]))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    assert_same_event(&read[0], &new);
    assert_eq!(read[0].decode::<OrderPlaced>().unwrap(), placed);
}

pub async fn upcast_chain_decodes_stored_old_versions<S: EventStore>(store: S) {
    let s = stream("customer");
    let stored = vec![
        NewEvent::new(&CustomerV1 {
            name: "Ada Lovelace".into(),
        })
        .unwrap(),
        NewEvent::raw("CUSTOMER_REGISTERED", 2, r#"{"first":"Grace","last":"Hopper"}"#),
        NewEvent::new(&Customer {
            first: "Alan".into(),
            last: "Turing".into(),
            email: Some("a@t.uk".into()),
        })
        .unwrap(),
    ];
    assert_eq!(stored.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3]);
    guard_await(store.append(&s, ExpectedVersion::NoStream, stored))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    let decoded: Vec<Customer> = read.iter().map(|r| r.decode::<Customer>().unwrap()).collect();
    assert_eq!(
        decoded,
        [
            Customer {
                first: "Ada".into(),
                last: "Lovelace".into(),
                email: None
            },
            Customer {
                first: "Grace".into(),
                last: "Hopper".into(),
                email: None
            },
            Customer {
                first: "Alan".into(),
                last: "Turing".into(),
                email: Some("a@t.uk".into())
            },
        ]
    );
    // A middle link decodes what is at most its own version.
    assert_eq!(
        read[0].decode::<CustomerV2>().unwrap(),
        CustomerV2 {
            first: "Ada".into(),
            last: "Lovelace".into()
        }
    );
    crate::assert_err!(
        read[2].decode::<CustomerV2>(),
        Error::UnknownVersion {
            version: 3,
            current: 2,
            ..
        }
    );
}

pub async fn unknown_newer_version_is_refused<S: EventStore>(store: S) {
    let s = stream("customer");
    let future = NewEvent::raw(
        "CUSTOMER_REGISTERED",
        9,
        r#"{"first":"A","last":"B","email":null,"phone":"1"}"#,
    );
    guard_await(store.append(&s, ExpectedVersion::NoStream, vec![future]))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    crate::assert_err!(
        read[0].decode::<Customer>(),
        Error::UnknownVersion { ref name, version: 9, current: 3 } if name == "CUSTOMER_REGISTERED"
    );
    // An older version with no upcaster is unknown too.
    let old = NewEvent::raw("ORDER_PLACED", 1, r#"{"id":7}"#);
    guard_await(store.append(&s, ExpectedVersion::Exact(0), vec![old]))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    crate::assert_err!(
        read[1].decode::<OrderPlaced>(),
        Error::UnknownVersion {
            version: 1,
            current: 4,
            ..
        }
    );
}

pub async fn wrong_event_name_is_refused<S: EventStore>(store: S) {
    let s = stream("mixed");
    let placed = OrderPlaced {
        order: 1,
        lines: Vec::new(),
        note: Some("n".into()),
    };
    guard_await(store.append(&s, ExpectedVersion::NoStream, vec![NewEvent::new(&placed).unwrap()]))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    crate::assert_err!(
        read[0].decode::<Customer>(),
        Error::UnexpectedEvent { expected: "CUSTOMER_REGISTERED", ref found } if found == "ORDER_PLACED"
    );
    // The right name with the wrong shape is a decode error, not a panic.
    let wrong_shape = NewEvent::raw("ORDER_PLACED", 4, r#"{"order":"seven"}"#);
    guard_await(store.append(&s, ExpectedVersion::Exact(0), vec![wrong_shape]))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    crate::assert_err!(read[1].decode::<OrderPlaced>(), Error::Decode { version: 4, .. });
}
