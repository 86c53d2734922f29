//! Proto-first gRPC: tests/proto/hero.proto compiled by switchboard-codegen (build.rs), its
//! methods served by `#[message_pattern({ service = "HeroesService", rpc = "…" })]` handlers that
//! take and return the prost messages; called with the tonic client generated from the same
//! .proto. Unary, server-, client- and bidirectional streaming; NestJS's status mapping;
//! metadata, deadlines and unserved methods.

#![cfg(feature = "grpc")]

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use switchboard::Microservice;
use switchboard::prelude::*;
use switchboard::transport::grpc::GrpcStream;

pub mod hero {
    tonic::include_proto!("hero");
}

use hero::{Empty, Headers, Hero, HeroById, Total};

fn name_of(id: i32) -> String {
    format!("hero-{id}")
}

#[message_pattern({ service = "HeroesService", rpc = "FindOne" })]
async fn find_one(req: HeroById) -> Hero {
    Hero {
        id: req.id,
        name: name_of(req.id),
    }
}

#[message_pattern({ service = "HeroesService", rpc = "ListAll" })]
async fn list_all(_: Empty) -> ReplyStream<Hero> {
    ReplyStream::iter((1..=3).map(|id| Hero { id, name: name_of(id) }))
}

#[message_pattern({ service = "HeroesService", rpc = "Count" })]
async fn count(reqs: GrpcStream<HeroById>) -> RpcResult<Total> {
    let ids: Vec<i32> = reqs
        .map(|r| r.map(|r| r.id))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(Total {
        count: ids.len() as i32,
        sum: ids.iter().sum(),
    })
}

#[message_pattern({ service = "HeroesService", rpc = "FindMany" })]
async fn find_many(reqs: GrpcStream<HeroById>) -> ReplyStream<Hero> {
    ReplyStream::new(reqs.map(|r| {
        r.map(|r| Hero {
            id: r.id,
            name: name_of(r.id),
        })
    }))
}

#[message_pattern({ service = "HeroesService", rpc = "Fail" })]
async fn fail(_: HeroById) -> RpcResult<Hero> {
    Err(RpcError::from_value(json!({"code": 5, "message": "hero not found"})))
}

#[message_pattern({ service = "HeroesService", rpc = "FailPlain" })]
async fn fail_plain(req: HeroById) -> Hero {
    if req.id >= 0 {
        panic!("boom");
    }
    Hero::default()
}

#[message_pattern({ service = "HeroesService", rpc = "Meta" })]
async fn meta(_: Empty, ctx: Context) -> Headers {
    Headers {
        entries: ctx
            .headers()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

#[message_pattern({ service = "HeroesService", rpc = "Slow" })]
async fn slow(req: HeroById) -> Hero {
    tokio::time::sleep(Duration::from_millis(req.id as u64)).await;
    Hero {
        id: req.id,
        name: "slow".into(),
    }
}

/// The generic service, on the same listener.
#[message_pattern("ping")]
async fn ping() -> String {
    "pong".into()
}

async fn server() -> (switchboard::RunningServer, String) {
    let s = Microservice::from_registry()
        .listen("grpc://127.0.0.1:0")
        .start()
        .await
        .expect("gRPC server starts");
    let url = s.local_url().to_owned();
    (s, url)
}

#[tokio::test]
async fn every_kind_of_method() {
    let (s, url) = server().await;
    let mut heroes = hero::connect_heroes_service(&url).await.unwrap();

    let h = heroes.find_one(HeroById { id: 7 }).await.unwrap().into_inner();
    assert_eq!(
        h,
        Hero {
            id: 7,
            name: "hero-7".into()
        }
    );

    let all: Vec<Hero> = heroes
        .list_all(Empty {})
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(all.iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2, 3]);

    let reqs = futures_util::stream::iter((1..=4).map(|id| HeroById { id }));
    let total = heroes.count(reqs).await.unwrap().into_inner();
    assert_eq!(total, Total { count: 4, sum: 10 });

    // Bidi: each answer arrives before the next request is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = heroes.find_many(tokio_stream_of(rx)).await.unwrap().into_inner();
    for id in [3, 1, 2] {
        tx.send(HeroById { id }).await.unwrap();
        let h = answers.next().await.unwrap().unwrap();
        assert_eq!(h.id, id);
    }
    drop(tx);
    assert!(answers.next().await.is_none(), "the call ends after the requests do");

    let plain = Client::connect(&url).await.unwrap();
    assert_eq!(plain.send_raw::<String>("ping", ()).await.unwrap(), "pong");
    s.shutdown().await.unwrap();
}

fn tokio_stream_of<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn nestjs_status_mapping() {
    let (s, url) = server().await;
    let mut heroes = hero::connect_heroes_service(&url).await.unwrap();
    let st = heroes.fail(HeroById { id: 1 }).await.unwrap_err();
    assert_eq!((st.code(), st.message()), (tonic::Code::NotFound, "hero not found"));
    let st = heroes.fail_plain(HeroById { id: 1 }).await.unwrap_err();
    assert_eq!(
        (st.code(), st.message()),
        (tonic::Code::Unknown, "Internal server error")
    );
    let st = heroes.not_served(Empty {}).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unimplemented);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn metadata_and_deadlines() {
    let (s, url) = server().await;
    let mut heroes = hero::connect_heroes_service(&url).await.unwrap();
    let mut req = tonic::Request::new(Empty {});
    req.metadata_mut().insert("x-trace", "abc".parse().unwrap());
    let headers = heroes.meta(req).await.unwrap().into_inner().entries;
    assert_eq!(headers.get("x-trace").map(String::as_str), Some("abc"));
    assert!(!headers.contains_key("grpc-timeout") && !headers.contains_key("te"));

    let mut req = tonic::Request::new(HeroById { id: 5_000 });
    // The header alone (`set_timeout` would also start a timer in the client): the server
    // enforces the deadline.
    req.metadata_mut().insert("grpc-timeout", "150m".parse().unwrap());
    let started = std::time::Instant::now();
    let st = heroes.slow(req).await.unwrap_err();
    // tonic's server enforces `grpc-timeout` on a unary method itself, and reports it as
    // CANCELLED "Timeout expired"; Switchboard's own check (streamed replies) says
    // DEADLINE_EXCEEDED. Either way the handler is dropped and the call ends on time.
    assert!(
        matches!(st.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{st:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    s.shutdown().await.unwrap();
}

// ---- Interop with NestJS's gRPC transport (tests/nestjs/grpc-*.mjs, installed by
// scripts/setup-nestjs.sh): a NestJS client against this service, and this crate's generated
// client against a NestJS service, both on tests/proto/hero.proto.

mod nestjs {
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::time::Duration;

    use futures_util::StreamExt;
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    use super::hero::{self, Empty, Hero, HeroById};

    fn peer_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nestjs")
    }

    /// True when NestJS `version` is installed; otherwise fails under CI or skips loudly.
    fn installed(version: u8) -> bool {
        let ok = peer_dir()
            .join(format!("v{version}/node_modules/@grpc/grpc-js/package.json"))
            .exists()
            && std::process::Command::new("node")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
        if !ok {
            let what = format!("NestJS {version} with @grpc/grpc-js (tests/nestjs/v{version}) or node");
            if std::env::var_os("CI").is_some() {
                panic!("{what} is missing (CI is set, so this fails instead of skipping): run scripts/setup-nestjs.sh");
            }
            eprintln!("SKIPPED: {what} is missing: run scripts/setup-nestjs.sh");
        }
        ok
    }

    async fn nest_client_against_us(version: u8) {
        if !installed(version) {
            return;
        }
        let (s, url) = super::server().await;
        let port = url.rsplit(':').next().unwrap().to_owned();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new("node")
                .arg(peer_dir().join("grpc-client.mjs"))
                .args(["--nest", &version.to_string(), "--port", &port])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the NestJS client finishes")
        .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(r["findOne"], json!({"ok": [{"id": 7, "name": "hero-7"}]}));
        assert_eq!(
            r["listAll"],
            json!({"ok": [{"id": 1, "name": "hero-1"}, {"id": 2, "name": "hero-2"}, {"id": 3, "name": "hero-3"}]})
        );
        assert_eq!(r["count"], json!({"ok": [{"count": 4, "sum": 10}]}), "client streaming");
        assert_eq!(
            r["findMany"],
            json!({"ok": [{"id": 3, "name": "hero-3"}, {"id": 1, "name": "hero-1"}, {"id": 2, "name": "hero-2"}]}),
            "bidirectional streaming"
        );
        assert_eq!(r["fail"], json!({"err": {"code": 5, "details": "hero not found"}}));
        assert_eq!(
            r["failPlain"],
            json!({"err": {"code": 2, "details": "Internal server error"}})
        );
        assert_eq!(r["meta"]["ok"][0]["entries"]["x-trace"], "abc", "{}", r["meta"]);
        assert_eq!(r["notServed"]["err"]["code"], 12, "UNIMPLEMENTED: {}", r["notServed"]);
        s.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn nestjs_11_client_calls_our_proto_service() {
        nest_client_against_us(11).await;
    }

    #[tokio::test]
    async fn nestjs_12_client_calls_our_proto_service() {
        nest_client_against_us(12).await;
    }

    async fn us_against_nest_server(version: u8) {
        if !installed(version) {
            return;
        }
        let mut child = Command::new("node")
            .arg(peer_dir().join("grpc-server.mjs"))
            .args(["--nest", &version.to_string(), "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the NestJS server starts")
            .unwrap()
            .expect("a READY line");
        let port = ready.strip_prefix("READY ").expect("READY <port>");
        let url = format!("grpc://127.0.0.1:{port}");
        let mut heroes = hero::connect_heroes_service(&url).await.unwrap();

        let mut req = tonic::Request::new(HeroById { id: 7 });
        req.metadata_mut().insert("x-trace", "abc".parse().unwrap());
        let h = heroes.find_one(req).await.unwrap().into_inner();
        assert_eq!(
            h,
            Hero {
                id: 7,
                name: "hero-7+abc".into()
            },
            "metadata reached the handler"
        );

        let all: Vec<i32> = heroes
            .list_all(Empty {})
            .await
            .unwrap()
            .into_inner()
            .map(|h| h.unwrap().id)
            .collect()
            .await;
        assert_eq!(all, [1, 2, 3]);

        let st = heroes.fail(HeroById { id: 1 }).await.unwrap_err();
        assert_eq!((st.code(), st.message()), (tonic::Code::NotFound, "hero not found"));
        let st = heroes.fail_plain(HeroById { id: 1 }).await.unwrap_err();
        assert_eq!(
            (st.code(), st.message()),
            (tonic::Code::Unknown, "Internal server error")
        );
        let st = heroes.not_served(Empty {}).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unimplemented);

        let mut req = tonic::Request::new(Empty {});
        req.metadata_mut().insert("x-trace", "def".parse().unwrap());
        let meta = heroes.meta(req).await.unwrap().into_inner();
        assert_eq!(meta.entries.get("x-trace").map(String::as_str), Some("def"));

        // Bidirectional: each answer comes back while the request stream is still open.
        // (NestJS 11/12's server does not end its side when the client half-closes here, so
        // the call is dropped rather than awaited to its end; client streaming is not run.)
        // grpc-js sends the response headers with the first answer, so the first request
        // goes out before the call is awaited.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(HeroById { id: 3 }).await.unwrap();
        let mut answers = heroes.find_many(super::tokio_stream_of(rx)).await.unwrap().into_inner();
        assert_eq!(answers.next().await.unwrap().unwrap().id, 3);
        for id in [1, 2] {
            tx.send(HeroById { id }).await.unwrap();
            assert_eq!(answers.next().await.unwrap().unwrap().id, id);
        }
        drop(answers);

        // A deadline sent as `grpc-timeout` is enforced by the NestJS (grpc-js) server too.
        let mut req = tonic::Request::new(HeroById { id: 5_000 });
        req.set_timeout(Duration::from_millis(200));
        let st = heroes.slow(req).await.unwrap_err();
        assert!(
            matches!(st.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
            "{st:?}"
        );
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }

    #[tokio::test]
    async fn our_client_calls_nestjs_11_grpc_service() {
        us_against_nest_server(11).await;
    }

    #[tokio::test]
    async fn our_client_calls_nestjs_12_grpc_service() {
        us_against_nest_server(12).await;
    }
}
