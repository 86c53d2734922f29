//! TCP keepalive on the connections Switchboard holds open (TCP and TLS, both ends; Redis's,
//! ours and redis-rs's; gRPC, both ends, through tonic's settings). A peer that vanished
//! without a FIN or RST (a host that lost power, a NAT or load balancer that dropped the
//! connection from its table) is otherwise never noticed by a connection that only reads, and
//! by one that writes only after the kernel's fifteen minutes of retransmissions; every call
//! on it fails at its deadline meanwhile. The probes also keep such middleboxes from
//! forgetting an idle connection. NATS, MQTT and AMQP have heartbeats of their own. (gRPC has
//! HTTP/2 PINGs, but gRPC servers by default answer a client that pings more often than every
//! five minutes with GOAWAY, `too_many_pings`.)

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle time before the first probe.
pub(crate) const IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered probes.
#[cfg_attr(not(any(target_os = "linux", feature = "grpc")), allow(dead_code))]
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection fails.
#[cfg_attr(not(any(target_os = "linux", feature = "grpc")), allow(dead_code))]
pub(crate) const PROBES: u32 = 3;
/// Data sent and not acknowledged for this long fails a client's connection
/// (`TCP_USER_TIMEOUT`).
#[cfg(target_os = "linux")]
pub(crate) const UNACKED: Duration = Duration::from_secs(60);

/// A server's end: an idle connection whose peer is gone fails about a minute after it went
/// silent (on Linux; elsewhere after the system's probe count and interval). Replies it
/// cannot deliver are bounded by the server's own write deadline.
#[cfg_attr(not(any(feature = "tcp", feature = "redis")), allow(dead_code))]
pub(crate) fn server(stream: &TcpStream) -> std::io::Result<()> {
    SockRef::from(stream).set_tcp_keepalive(&probes())
}

/// The probes' settings, for connections that others open (redis-rs's).
pub(crate) fn probes() -> TcpKeepalive {
    let probes = TcpKeepalive::new().with_time(IDLE);
    #[cfg(target_os = "linux")]
    let probes = probes.with_interval(INTERVAL).with_retries(PROBES);
    probes
}

/// A client's end: as a server's, and on Linux a request that the peer does not acknowledge
/// within a minute fails the connection too (the calls on it fail, the next go to a new
/// one), as does a peer that takes nothing it is sent for a minute.
#[cfg_attr(not(any(feature = "tcp", feature = "redis")), allow(dead_code))]
pub(crate) fn client(stream: &TcpStream) -> std::io::Result<()> {
    server(stream)?;
    #[cfg(target_os = "linux")]
    SockRef::from(stream).set_tcp_user_timeout(Some(UNACKED))?;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_probe_and_a_client_bounds_unacknowledged_data() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = SockRef::from(&stream);
        assert!(!socket.keepalive().unwrap(), "off until enabled");
        client(&stream).unwrap();
        server(&accepted).unwrap();
        for socket in [socket, SockRef::from(&accepted)] {
            assert!(socket.keepalive().unwrap());
            assert_eq!(socket.tcp_keepalive_time().unwrap(), IDLE);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), PROBES);
        }
        assert_eq!(SockRef::from(&stream).tcp_user_timeout().unwrap(), Some(UNACKED));
        assert_eq!(SockRef::from(&accepted).tcp_user_timeout().unwrap(), None);
    }
}
