//! Accepting connections: one accept loop per listener, one task per
//! connection, HTTP/1.1 (and HTTP/2 with prior knowledge) via hyper-util.
//!
//! The handler gets each request with the address of the peer that sent it
//! (telemetry's `peer.address`).
//!
//! On shutdown the accept loop stops at once and every connection is asked
//! to finish gracefully: idle keep-alive connections close, requests in
//! flight complete (up to the drain timeout in [`crate::proxy`]). Envoy does
//! the same when its listeners drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Rsp;

/// Serve `handler` on `listener` until `shutdown` is cancelled.
pub fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    handler: F,
) where
    F: Fn(SocketAddr, http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Rsp, Infallible>> + Send + 'static,
{
    let accept_tasks = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors: back off briefly
                        // rather than spin.
                        tracing::warn!(listener = name, %error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            accept_tasks.spawn(connection(
                name,
                stream,
                peer,
                shutdown.clone(),
                handler.clone(),
            ));
        }
        tracing::debug!(listener = name, "stopped accepting");
    });
}

async fn connection<F, Fut>(
    name: &'static str,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(SocketAddr, http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Rsp, Infallible>> + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let service = service_fn(move |req| handler(peer, req));
    // With upgrades: a WebSocket's 101 hands the socket to its tunnel.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(listener = name, %peer, %error, "connection ended with an error");
    }
}
