//! gRPC health checking, `grpc.health.v1.Health` (tonic-health's service), answered from
//! the service's [`Health`]: `SERVING` while it is ready, `NOT_SERVING` otherwise.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::wire;
use crate::transport::health::Health;

/// The statuses the health service answers, kept current.
pub(super) struct Reporter {
    reporter: HealthReporter,
    /// The whole server (""), the generic service, and the service by its name.
    names: Vec<String>,
    health: Health,
}

impl Reporter {
    /// Adds the health service to `routes`, with the statuses of now.
    pub(super) async fn start(routes: &mut tonic::service::RoutesBuilder, health: Health) -> Reporter {
        let (reporter, service) = tonic_health::server::health_reporter();
        routes.add_service(service);
        let mut names = vec![String::new(), wire::SERVICE.to_owned()];
        if let Some(name) = health.name()
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_owned());
        }
        publish(&reporter, &names, &health).await;
        Reporter {
            reporter,
            names,
            health,
        }
    }

    /// Keeps the statuses current until shutdown begins (to run alongside the server).
    pub(super) async fn run(self) {
        report(self.reporter, self.names, self.health).await
    }
}

/// Sets every name's status to the service's.
async fn publish(reporter: &HealthReporter, names: &[String], health: &Health) {
    let status = match health.is_ready() {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    };
    for name in names {
        reporter.set_service_status(name, status).await;
    }
}

/// Follows the service's health; once shutdown begins, answers `NOT_SERVING` and then ends
/// the `Watch` streams (a stream that never ends would hold the drain until its timeout).
async fn report(mut reporter: HealthReporter, names: Vec<String>, health: Health) {
    let mut changes = health.subscribe();
    while !health.is_draining() {
        changes.changed().await;
        publish(&reporter, &names, &health).await;
    }
    // A stream still sees the last status before it ends: dropping a status's sender ends
    // its `Watch` streams after the values they have not seen yet.
    for name in &names {
        reporter.clear_service_status(name).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::sync::watch;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus as Wire};

    use super::*;
    use crate::transport::Shutdown;

    /// Serves only the health service of `health` on a local port; its address.
    async fn serve_health(health: Health, shutdown: Shutdown) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut routes = tonic::service::Routes::builder();
        let reporting = Reporter::start(&mut routes, health).await.run();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let server = tonic::transport::Server::builder()
                .add_routes(routes.routes())
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async move {
                    stop.wait().await
                });
            let _ = futures_util::future::join(server, reporting).await;
        });
        addr
    }

    async fn client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
        HealthClient::new(super::super::channel(&format!("grpc://{addr}")).await.unwrap())
    }

    async fn check(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> Result<Wire, tonic::Code> {
        client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    }

    #[tokio::test]
    async fn follows_a_transport_and_draining_then_ends_watches() {
        let (stop, shutdown) = Shutdown::new();
        let health = Health::new(Some("users"), &shutdown);
        let (broker, ready) = watch::channel(false);
        let _guards = health.watch_transports(vec![("redis://127.0.0.1:1".into(), Some(ready))]);
        let addr = serve_health(health, shutdown).await;
        let mut client = client(addr).await;
        for service in ["", "users", wire::SERVICE] {
            assert_eq!(check(&mut client, service).await, Ok(Wire::NotServing), "{service:?}");
        }
        assert_eq!(check(&mut client, "other").await, Err(tonic::Code::NotFound));

        let mut watch = client
            .watch(HealthCheckRequest { service: "".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next(&mut watch).await, Some(Wire::NotServing));
        broker.send_replace(true);
        assert_eq!(next(&mut watch).await, Some(Wire::Serving));
        assert_eq!(check(&mut client, "users").await, Ok(Wire::Serving));

        stop.send_replace(true);
        assert_eq!(next(&mut watch).await, Some(Wire::NotServing));
        assert_eq!(next(&mut watch).await, None, "the watch ends once shutdown began");
    }

    /// The next status of a `Watch` stream (`None` when it ended), within 10 s.
    async fn next(watch: &mut tonic::Streaming<HealthCheckResponse>) -> Option<Wire> {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
        next.expect("a status, or the end, within 10 s")
            .map(|r| r.expect("a status, not an error").status())
    }
}
