//! `switchboard bench` against real services: a Switchboard server over TCP started here, the
//! in-process echo of `mem://`, and the NestJS 12 peer (tests/nestjs) over TCP. Counts and
//! shapes are asserted, never timings.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::prelude::*;

mod common;
use common::nestjs;

#[message_pattern({ cmd = "bench.sum" })]
async fn sum(numbers: Vec<f64>) -> f64 {
    numbers.iter().sum()
}

#[message_pattern("bench.fails")]
async fn fails() -> RpcResult<u32> {
    Err(RpcError::from_value(json!({"message": "always"})))
}

#[message_pattern("bench.slow")]
async fn slow(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

async fn serve() -> (switchboard::RunningServer, String) {
    let server = Microservice::new()
        .handler(SUM)
        .handler(FAILS)
        .handler(SLOW)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server starts");
    let url = server.local_url().to_owned();
    (server, url)
}

/// Runs the binary with `args` (off the test's runtime, which serves meanwhile).
async fn bench(args: &[&str]) -> Output {
    let args: Vec<String> = std::iter::once("bench")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("the switchboard binary runs")
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON report of a run that must have succeeded.
fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_str(text(&out.stdout).trim()).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn errors(report: &Value) -> u64 {
    report["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// The summary percentiles, in order, and the max.
fn percentiles(report: &Value) -> Vec<f64> {
    ["min", "p50", "p75", "p90", "p99", "p99.9", "max"]
        .iter()
        .map(|p| {
            report["latency_us"][p]
                .as_f64()
                .unwrap_or_else(|| panic!("no {p}: {report}"))
        })
        .collect()
}

fn assert_ordered(report: &Value) {
    let p = percentiles(report);
    assert!(p[0] > 0.0, "{report}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "percentiles out of order: {p:?}");
}

#[tokio::test]
async fn a_fixed_count_makes_exactly_that_many_calls() {
    let (server, url) = serve().await;
    for driver in ["auto", "client"] {
        let out = bench(&[
            &url,
            r#"{"cmd":"bench.sum"}"#,
            "[1,2,3]",
            "-n",
            "2001",
            "-c",
            "16",
            "-k",
            "3",
            "--driver",
            driver,
            "--json",
        ])
        .await;
        let r = report(&out);
        assert_eq!(r["calls"], 2001, "{driver}: {r}");
        assert_eq!(r["ok"], 2001, "{driver}: {r}");
        assert_eq!(errors(&r), 0, "{driver}: {r}");
        assert_eq!(r["mode"], "closed");
        assert_eq!(r["latency_from"], "send");
        assert_eq!(r["driver"], if driver == "auto" { "pipelined" } else { "client" });
        assert_eq!(
            (r["concurrency"].as_u64(), r["connections"].as_u64()),
            (Some(16), Some(3))
        );
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
        assert_ordered(&r);
        assert!(
            text(&out.stderr).is_empty(),
            "no progress line when stderr is not a terminal: {}",
            text(&out.stderr)
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_table_says_what_was_measured() {
    let (server, url) = serve().await;
    let out = bench(&[&url, r#"{"cmd":"bench.sum"}"#, "[1]", "-n", "500", "-c", "4"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for part in [
        "throughput",
        "calls/s",
        "500 calls",
        "errors",
        "p50",
        "p99.9",
        "max",
        "closed loop, 4 in flight",
    ] {
        assert!(table.contains(part), "{part:?} missing from:\n{table}");
    }
    assert!(
        !table.contains('\x1b'),
        "no colours when stdout is not a terminal:\n{table}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_open_loop_makes_about_rate_times_duration_calls() {
    let (server, url) = serve().await;
    let out = bench(&[
        &url,
        r#"{"cmd":"bench.sum"}"#,
        "[1,2]",
        "--rate",
        "200",
        "-d",
        "2s",
        "--warmup",
        "0s",
        "-c",
        "8",
        "--json",
    ])
    .await;
    let r = report(&out);
    // 400 calls are due; the pacer releases them on schedule, so a slow machine makes them
    // late, not fewer.
    let calls = r["calls"].as_u64().unwrap();
    assert!((390..=410).contains(&calls), "{calls} calls: {r}");
    assert_eq!(errors(&r), 0, "{r}");
    assert_eq!((r["mode"].as_str(), r["rate"].as_f64()), (Some("open"), Some(200.0)));
    assert_eq!(r["latency_from"], "intended");
    assert_eq!(r["driver"], "client");
    assert_ordered(&r);
    // A fixed count in an open loop: exactly that many.
    let out = bench(&[
        &url,
        r#"{"cmd":"bench.sum"}"#,
        "[1]",
        "--rate",
        "2k",
        "-n",
        "300",
        "--json",
    ])
    .await;
    assert_eq!(report(&out)["calls"], 300);

    // 100 calls due in 1 s, each taking 200 ms, 2 at a time: most wait for a slot longer
    // than the timeout and count as timeouts, unsent; those sent count their wait (latency
    // from when they were due).
    let out = bench(&[
        &url,
        "bench.slow",
        "200",
        "--rate",
        "100",
        "-d",
        "1s",
        "--warmup",
        "0s",
        "-c",
        "2",
        "--timeout",
        "500ms",
        "--json",
    ])
    .await;
    let r = report(&out);
    assert_eq!(r["calls"], 100, "every call due is made or counted: {r}");
    let (ok, late) = (r["ok"].as_u64().unwrap(), r["errors"]["timeout"].as_u64().unwrap());
    assert_eq!(ok + late, 100, "{r}");
    assert!(
        ok >= 1 && late >= 70,
        "2 slots of 200 ms cannot make 30 calls in 1.5 s: {r}"
    );
    assert!(r["latency_us"]["max"].as_f64().unwrap() >= 200_000.0, "{r}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_run_is_compared_with_a_saved_one_and_plotted() {
    let (server, url) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("base.json");
    let plot = dir.path().join("latency.svg");
    let saved_s = saved.to_str().unwrap();
    let out = bench(&[&url, r#"{"cmd":"bench.sum"}"#, "[1]", "-n", "400", "--save", saved_s]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!((kept["format"].as_u64(), kept["calls"].as_u64()), (Some(1), Some(400)));

    let out = bench(&[
        &url,
        r#"{"cmd":"bench.sum"}"#,
        "[1]",
        "-n",
        "400",
        "--compare",
        saved_s,
        "--plot",
        plot.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("compared with") && table.contains(saved_s), "{table}");
    for row in ["throughput", "p50", "p99.9", "max"] {
        let line = table
            .lines()
            .skip_while(|l| !l.contains("compared with"))
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row in:\n{table}"));
        assert!(line.contains('%'), "{line}");
    }

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 2, "this run and the saved one: {svg}");
    assert_eq!(svg.matches('<').count(), svg.matches('>').count(), "{svg}");
    // Every point is a pair of numbers.
    for points in svg.split("points=\"").skip(1) {
        let points = &points[..points.find('"').unwrap()];
        assert_eq!(points.split(' ').count(), 51, "{points}");
        for xy in points.split(' ') {
            let (x, y) = xy.split_once(',').unwrap();
            assert!(x.parse::<f64>().is_ok() && y.parse::<f64>().is_ok(), "{xy}");
        }
    }

    // With --json the comparison is part of the object.
    let out = bench(&[
        &url,
        r#"{"cmd":"bench.sum"}"#,
        "[1]",
        "-n",
        "200",
        "--compare",
        saved_s,
        "--json",
    ])
    .await;
    let r = report(&out);
    let rows = r["compare"]["rows"].as_array().unwrap();
    let metrics: Vec<&str> = rows.iter().map(|row| row["metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["throughput", "p50", "p75", "p90", "p99", "p99.9", "max"]);
    assert!(rows.iter().all(|row| row["change_pct"].is_number()), "{r}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn failures_are_counted_by_kind() {
    let (server, url) = serve().await;
    for driver in ["auto", "client"] {
        let out = bench(&[
            &url,
            "bench.fails",
            "null",
            "-n",
            "300",
            "-c",
            "8",
            "--driver",
            driver,
            "--json",
        ])
        .await;
        let r = report(&out);
        assert_eq!(
            (r["calls"].as_u64(), r["ok"].as_u64()),
            (Some(300), Some(0)),
            "{driver}: {r}"
        );
        assert_eq!(r["errors"]["handler_error"], 300, "{driver}: {r}");
        assert!(
            r["latency_us"].as_object().unwrap().is_empty(),
            "no latency without a success: {r}"
        );

        let out = bench(&[&url, "bench.nobody", "null", "-n", "50", "--driver", driver, "--json"]).await;
        let r = report(&out);
        assert_eq!(r["errors"]["no_handler"], 50, "{driver}: {r}");

        let out = bench(&[
            &url,
            "bench.slow",
            "2000",
            "-n",
            "4",
            "-c",
            "4",
            "--timeout",
            "200ms",
            "--driver",
            driver,
            "--json",
        ])
        .await;
        let r = report(&out);
        assert_eq!(r["errors"]["timeout"], 4, "{driver}: {r}");
    }
    let out = bench(&[&url, "bench.fails", "null", "-n", "20"]).await;
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("handler error 20"), "{}", text(&out.stdout));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_runs_against_the_built_in_echo() {
    let out = bench(&[
        "mem://bench-test",
        "anything",
        r#"{"a":[1,2]}"#,
        "-n",
        "20000",
        "-c",
        "32",
        "--json",
    ])
    .await;
    let r = report(&out);
    assert_eq!(
        (r["calls"].as_u64(), r["ok"].as_u64()),
        (Some(20000), Some(20000)),
        "{r}"
    );
    assert_eq!(r["driver"], "in-process");
    assert_ordered(&r);
}

#[tokio::test]
async fn bad_usage_exits_2_and_an_unreachable_service_5() {
    let (server, url) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let not_saved = dir.path().join("nothing.json");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"not\":\"a run\"}").unwrap();
    let p = r#"{"cmd":"bench.sum"}"#;
    for bad in [
        vec![url.as_str(), p, "[1]", "--rate", "0"],
        vec![url.as_str(), p, "[1]", "--rate", "1e-20"],
        vec![url.as_str(), p, "[1]", "--rate", "fast"],
        vec![url.as_str(), p, "[1]", "-c", "2", "-k", "4"],
        vec![url.as_str(), p, "[1]", "-c", "0"],
        vec![url.as_str(), p, "[1]", "-n", "0"],
        vec![url.as_str(), p, "[1]", "-n", "5", "-d", "1s"],
        vec![url.as_str(), p, "[1]", "-d", "soon"],
        vec![url.as_str(), p, "[1]", "-d", "0s"],
        vec![url.as_str(), p, "[1]", "--timeout", "0s"],
        vec![url.as_str(), p, "{not json"],
        vec![url.as_str(), p, "[1]", "--plot", "latency.png"],
        vec![url.as_str(), p, "[1]", "--compare", not_saved.to_str().unwrap()],
        vec![url.as_str(), p, "[1]", "--compare", garbage.to_str().unwrap()],
        vec![url.as_str(), p, "[1]", "--rate", "100", "--driver", "pipelined"],
        vec!["mem://x", p, "[1]", "--driver", "pipelined"],
        vec!["carrier-pigeon://x", p, "[1]", "-n", "1"],
        vec![url.as_str()],
    ] {
        let out = bench(&bad).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).is_empty(), "{bad:?} says why");
    }
    let out = bench(&[&url, p, "[1]", "-c", "2", "-k", "4"]).await;
    assert!(text(&out.stderr).contains("-k 4"), "{}", text(&out.stderr));
    // 64 requests of 20 kB in flight on one connection: more than the pipelined driver
    // writes at once; left to the client.
    let big = format!("\"{}\"", "x".repeat(20_000));
    let out = bench(&[
        &url,
        "bench.nobody",
        &big,
        "-c",
        "64",
        "-n",
        "1",
        "--driver",
        "pipelined",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = bench(&[&url, "bench.nobody", &big, "-c", "64", "-n", "64", "--json"]).await;
    let r = report(&out);
    assert_eq!(
        (r["driver"].as_str(), r["errors"]["no_handler"].as_u64()),
        (Some("client"), Some(64))
    );
    server.shutdown().await.unwrap();

    // Nothing listens there any more: said at the start, with the exit code of `call`.
    for driver in ["auto", "client"] {
        let out = bench(&[&url, p, "[1]", "-n", "5", "--timeout", "2s", "--driver", driver]).await;
        assert_eq!(out.status.code(), Some(5), "{driver}: {}", text(&out.stderr));
        let out = bench(&[
            &url,
            p,
            "[1]",
            "-n",
            "5",
            "--timeout",
            "2s",
            "--driver",
            driver,
            "--json",
        ])
        .await;
        let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert_eq!(line["error"]["kind"], "unreachable", "{driver}");
    }
}

#[tokio::test]
async fn help_has_examples() {
    let out = bench(&["--help"]).await;
    let help = text(&out.stdout);
    for part in [
        "Examples:",
        "--rate",
        "coordinated",
        "mem://",
        "--compare",
        "--plot",
        "--json",
    ] {
        assert!(help.contains(part), "{part:?} missing from --help:\n{help}");
    }
}

/// NestJS 12's own TCP server (tests/nestjs/server.mjs) under load, through both drivers.
#[tokio::test]
async fn benches_a_nestjs_server() {
    let Some((mut node, port)) = nestjs(&["--port", "0"]).await else {
        return;
    };
    let url = format!("tcp://127.0.0.1:{port}");
    for driver in ["auto", "client"] {
        let out = bench(&[
            &url,
            r#"{"cmd":"sum"}"#,
            "[1,2,3]",
            "-n",
            "1000",
            "-c",
            "8",
            "-k",
            "2",
            "--driver",
            driver,
            "-H",
            "tenant=acme",
            "--json",
        ])
        .await;
        let r = report(&out);
        assert_eq!(
            (r["calls"].as_u64(), r["ok"].as_u64()),
            (Some(1000), Some(1000)),
            "{driver}: {r}"
        );
        assert_ordered(&r);
        let out = bench(&[&url, "rpc_object", "null", "-n", "20", "--driver", driver, "--json"]).await;
        assert_eq!(report(&out)["errors"]["handler_error"], 20, "{driver}");
    }
    node.kill().await.unwrap();
}
