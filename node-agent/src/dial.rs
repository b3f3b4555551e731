//! Dialling the broker: plain TCP with the options the link needs, under tonic's TLS.
//!
//! The link sends telemetry every second, so a broker whose host died (or was cut off)
//! leaves data unacknowledged within a second. `TCP_USER_TIMEOUT` closes the connection
//! once data has gone unacknowledged for `dead_link_after`, and the agent dials the next
//! broker. Without it the link would wait for the HTTP/2 keepalive (10 s + 5 s), or for the
//! kernel's retransmissions to give up (minutes), while the new leader already leads: a
//! broker that dies with its host sends no FIN or RST, unlike a killed process.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

/// Connects to a broker's host and port with `TCP_NODELAY` and `TCP_USER_TIMEOUT`.
#[derive(Clone, Debug)]
pub struct Connector {
    /// Unacknowledged data older than this ends the connection.
    pub user_timeout: Duration,
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let user_timeout = self.user_timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("{uri} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(user_timeout))?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::Service as _;

    #[tokio::test]
    async fn connects_with_the_user_timeout_set() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut connector = Connector {
            user_timeout: Duration::from_millis(2500),
        };
        let io = connector
            .call(format!("http://127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let stream = io.into_inner();
        let socket = socket2::SockRef::from(&stream);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
        assert!(stream.nodelay().unwrap());
        let refused = connector
            .call("http://127.0.0.1:1".parse().unwrap())
            .await
            .expect_err("nothing listens on port 1");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
