//! The Switchboard side: the `add` handler served by `Microservice` over `tcp://`, exactly
//! as a user would write it.

use switchboard::prelude::*;

#[derive(Deserialize)]
pub struct AddRequest {
    a: i64,
    b: i64,
}

#[derive(Serialize)]
pub struct AddReply {
    result: i64,
}

#[message_pattern(cmd = "add")]
async fn add(req: AddRequest) -> AddReply {
    AddReply {
        result: req.a.wrapping_add(req.b),
    }
}

/// Starts the server on a free loopback port.
pub async fn start() -> switchboard::Result<switchboard::RunningServer> {
    Microservice::new()
        .handler(add)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
}

/// Serves until the process exits; prints `port=<n>` on stdout once listening.
pub fn run(threads: usize) -> anyhow::Result<()> {
    let rt = crate::server_runtime(threads)?;
    rt.block_on(async {
        let server = start().await?;
        let url = server.local_url();
        let port = url
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no port in local_url {url:?}"))?;
        crate::announce_port(port);
        // The parent ends this process (stdin closes); until then, serve.
        std::future::pending::<()>().await;
        drop(server);
        Ok(())
    })
}
