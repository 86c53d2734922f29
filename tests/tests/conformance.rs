//! The conformance suite (tests/common/conformance.rs) over the built-in transports:
//! in-process, TCP and TLS. Each broker transport runs the same suite in its own binary.

mod common;

use std::time::Duration;

use common::ECHO;
use serde_json::json;
use switchboard::Client;

switchboard_conformance!(mod in_process, url: "mem://conformance", broker: "", fix: "");
switchboard_conformance!(mod tcp, url: "tcp://127.0.0.1:0", broker: "", fix: "");
// Switchboard's own codec between Switchboard peers: the same behaviour, in MessagePack.
switchboard_conformance!(mod in_process_msgpack, url: "mem://conformance-msgpack", broker: "", fix: "", client_query: "?codec=msgpack");
switchboard_conformance!(mod tcp_msgpack, url: "tcp://127.0.0.1:0", broker: "", fix: "", client_query: "?codec=msgpack");

#[tokio::test]
async fn tls_transport() {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let s = switchboard::Microservice::from_registry()
        .listen(format!(
            "tls://127.0.0.1:0?cert={}&key={}",
            cert_path.display(),
            key_path.display()
        ))
        .start()
        .await
        .expect("TLS server starts");
    let port = s.local_url().rsplit(':').next().unwrap().to_owned();
    let url = format!(
        "tls://127.0.0.1:{port}?ca={}&server_name=localhost",
        cert_path.display()
    );
    common::conformance::all(&url).await;

    // A client that does not trust the certificate cannot connect.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_path = dir.join("other.pem");
    std::fs::write(&other_path, other.cert.pem()).unwrap();
    let err = Client::connect(&format!(
        "tls://127.0.0.1:{port}?ca={}&server_name=localhost",
        other_path.display()
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    // Plain TCP to a TLS server: the server reads no handshake and closes the connection, so
    // the call fails as closed (within its 10 s deadline, not at it); TLS clients still served.
    let plain = Client::builder(&format!("tcp://127.0.0.1:{port}"))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let err = plain.send(ECHO, json!(1)).await.unwrap_err();
    assert!(matches!(err, switchboard::Error::ConnectionClosed { .. }), "{err:?}");
    let tls = Client::connect(&url).await.unwrap();
    assert_eq!(tls.send(ECHO, json!(2)).await.unwrap(), json!(2));
    s.shutdown().await.unwrap();
}
