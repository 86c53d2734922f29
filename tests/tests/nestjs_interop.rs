//! Interop with real NestJS (`@nestjs/microservices` 11 and 12 from npm, installed by
//! scripts/setup-nestjs.sh) over TCP: a NestJS client against our server, and our client
//! against a NestJS server (tests/nestjs, common/nest.rs).

mod common;

use common::nest::{self, NestServer, Transport, Unknown, nest_installed};

/// What TCP does in the shared scenarios: 1 MiB payloads, NestJS's no-handler error for an
/// unknown pattern, NestJS 12 metadata both ways.
const TCP: Transport = Transport {
    payload: 1 << 20,
    unknown: Unknown::HandlerError,
    metadata_from_nest: true,
    metadata_to_nest: true,
    nest_client_concurrent: true,
    kafka_quirks: false,
};

/// Port 0: each server gets a free port of its own.
const URL: &str = "tcp://127.0.0.1:0";

async fn nest_client_calls_our_server(version: u8) {
    if nest_installed(version, URL) {
        nest::nest_client_calls_our_server(version, URL, &TCP).await;
    }
}

async fn our_client_calls_nest_server(version: u8) {
    if nest_installed(version, URL) {
        let nest = NestServer::start(version, URL).await;
        nest::our_client_calls_nest_server(&nest, &TCP).await;
    }
}

nest_interop_tests! {
    nest_client: nest_client_calls_our_server,
    our_client: our_client_calls_nest_server,
}
