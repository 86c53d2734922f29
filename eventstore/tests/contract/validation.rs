//! Input a store refuses with `Error::Invalid` (never a panic, never a partial write), and
//! input it must take.

use bytes::Bytes;
use switchboard_eventstore::{Append, EventStore, ExpectedVersion, MAX_NAME_LEN, NewEvent, ReadStream, StreamState};

use super::support::*;

/// Appends `events` to `stream` expecting `Invalid`, and checks nothing was written.
async fn refused<S: EventStore>(store: &S, stream: &str, events: Vec<NewEvent>) {
    let before = dump(store, &[]).await;
    assert_invalid(guard_await(store.append(stream, ExpectedVersion::Any, events.clone())).await);
    let multi = store.append_multi(vec![Append::new(stream, ExpectedVersion::Any, events)]);
    assert_invalid(guard_await(multi).await);
    assert_eq!(dump(store, &[]).await, before);
}

pub async fn empty_stream_name_is_invalid<S: EventStore>(store: S) {
    refused(&store, "", events(0, 1)).await;
}

pub async fn too_long_stream_name_is_invalid<S: EventStore>(store: S) {
    refused(&store, &"s".repeat(MAX_NAME_LEN + 1), events(0, 1)).await;
    // The limit is in bytes: 511 ASCII bytes and a two-byte character.
    refused(&store, &format!("{}\u{e9}", "s".repeat(MAX_NAME_LEN - 1)), events(0, 1)).await;
    // The longest name is fine.
    let longest = "s".repeat(MAX_NAME_LEN);
    let new = seed(&store, &longest, 1).await;
    let read = stream_events(&store, &longest).await;
    assert_same_event(&read[0], &new[0]);
    assert_eq!(read[0].stream, longest);
}

pub async fn stream_name_with_nul_is_invalid<S: EventStore>(store: S) {
    refused(&store, "user\0-1", events(0, 1)).await;
    refused(&store, "\0", events(0, 1)).await;
}

pub async fn empty_event_name_is_invalid<S: EventStore>(store: S) {
    refused(&store, &stream("s"), vec![NewEvent::raw("", 1, "{}")]).await;
    // One bad event in a batch refuses the batch.
    let mut batch = events(0, 2);
    batch.push(NewEvent::raw("", 1, "{}"));
    refused(&store, &stream("s"), batch).await;
}

pub async fn too_long_event_name_is_invalid<S: EventStore>(store: S) {
    refused(
        &store,
        &stream("s"),
        vec![NewEvent::raw("E".repeat(MAX_NAME_LEN + 1), 1, "{}")],
    )
    .await;
    refused(&store, &stream("s"), vec![NewEvent::raw("E\0", 1, "{}")]).await;
    let s = stream("s");
    let longest = NewEvent::raw("E".repeat(MAX_NAME_LEN), 1, "{}");
    guard_await(store.append(&s, ExpectedVersion::NoStream, vec![longest.clone()]))
        .await
        .unwrap();
    assert_same_event(&stream_events(&store, &s).await[0], &longest);
}

pub async fn data_that_is_not_json_is_invalid<S: EventStore>(store: S) {
    let s = stream("s");
    for data in [
        "",
        "   ",
        "{",
        "{\"a\":}",
        "not json",
        "{}{}",
        "{} x",
        "[1,]",
        "'single'",
        "{\"a\":1,}",
        "NaN",
    ] {
        refused(&store, &s, vec![NewEvent::raw("E", 1, data)]).await;
    }
    assert_eq!(state(&store, &s).await, StreamState::NoStream);
}

pub async fn data_that_is_not_utf8_is_invalid<S: EventStore>(store: S) {
    // JSON is UTF-8 (RFC 8259): a string holding a lone 0xFF byte is not JSON.
    let s = stream("s");
    refused(&store, &s, vec![NewEvent::raw("E", 1, Bytes::from_static(b"\"\xff\""))]).await;
    refused(
        &store,
        &s,
        vec![NewEvent::raw("E", 1, Bytes::from_static(b"{\"a\":\"\xc3\x28\"}"))],
    )
    .await;
    let mut event = NewEvent::raw("E", 1, "{}");
    event.metadata = Bytes::from_static(b"{\"k\":\"\xff\"}");
    refused(&store, &s, vec![event]).await;
}

pub async fn metadata_that_is_not_json_is_invalid<S: EventStore>(store: S) {
    let s = stream("s");
    for metadata in ["", "{", "not json", "{\"a\":1,}"] {
        let mut event = NewEvent::raw("E", 1, "{}");
        event.metadata = Bytes::from(metadata);
        refused(&store, &s, vec![event]).await;
    }
}

pub async fn append_without_events_is_invalid<S: EventStore>(store: S) {
    let s = stream("s");
    refused(&store, &s, Vec::new()).await;
    seed(&store, &s, 1).await;
    refused(&store, &s, Vec::new()).await;
    assert_eq!(state(&store, &s).await, StreamState::At(0));
}

pub async fn unicode_stream_names_work<S: EventStore>(store: S) {
    let names = [
        "caf\u{e9}-1".to_owned(),
        "cafe\u{301}-1".to_owned(), // the same word, decomposed: another name
        "\u{7528}\u{6237}-\u{4E00}".to_owned(),
        "\u{1F600}\u{1F680}".to_owned(),
        "with space/and:colon'quote\"".to_owned(),
        "\u{5D0}\u{5D1}-rtl".to_owned(),
    ];
    for (i, name) in names.iter().enumerate() {
        guard_await(store.append(name, ExpectedVersion::NoStream, events(i as u64, 1)))
            .await
            .unwrap();
    }
    let all = all_events(&store).await;
    assert_eq!(all.iter().map(|r| r.stream.clone()).collect::<Vec<_>>(), names);
    for (i, name) in names.iter().enumerate() {
        let read = guard_await(store.read_stream(name, ReadStream::forwards(0, 10)))
            .await
            .unwrap();
        assert_eq!(places(&read), [(0, i as u64 + 1)], "{name}");
        assert_eq!(&read[0].stream, name);
        assert_eq!(state(&store, name).await, StreamState::At(0));
    }
}

pub async fn one_mib_event_round_trips<S: EventStore>(store: S) {
    let s = stream("big");
    // 1 MiB of JSON: a string of varied (multi-byte included) characters.
    let mut text = String::with_capacity(1 << 20);
    let alphabet = ['a', 'Z', '0', ' ', '\u{e9}', '\u{4E2D}', '\u{1F600}'];
    let mut i = 0;
    while text.len() < 1 << 20 {
        text.push(alphabet[i % alphabet.len()]);
        i += 1;
    }
    let data = serde_json::to_vec(&serde_json::json!({ "blob": text })).unwrap();
    assert!(data.len() >= 1 << 20);
    let big = NewEvent::raw("BIG", 1, data.clone());
    let small = events(0, 1).remove(0);
    guard_await(store.append(&s, ExpectedVersion::NoStream, vec![big.clone(), small.clone()]))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    assert_same_event(&read[0], &big);
    assert_same_event(&read[1], &small);
    assert_eq!(read[0].data.len(), data.len());
    assert_same_event(&all_events(&store).await[0], &big);
}
