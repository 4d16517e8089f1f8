//! The accept loop of [`serve`](crate::serve): hyper's HTTP/1 server with a
//! timer, so that a header read timeout applies (`axum::serve` sets no
//! timer, and without one hyper waits for headers forever), and a graceful
//! shutdown that lets requests in flight finish.

use std::{future::Future, pin::pin, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::task::TaskTracker;

/// How long a shutdown waits for HTTP requests and WebSocket connections
/// to finish.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);

/// hyper's own bound on a request's header section. Our limits
/// (`max_uri_bytes`, `max_header_bytes`) sit below it and answer with the
/// error body; past this one hyper refuses the request by itself, with an
/// empty 431, before there is a request to answer.
const HYPER_MAX_BUF: usize = 256 * 1024;

/// How many headers hyper parses; our own limit on their size applies
/// first in practice.
const HYPER_MAX_HEADERS: usize = 256;

/// Serves `app` on `listener` until `shutdown` completes, then waits (at
/// most [`DRAIN`]) for the HTTP connections to finish what they are doing.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // hyper-util's `GracefulShutdown` does not take connections that may be
    // upgraded to WebSockets; this is the same thing, by hand: each
    // connection finishes its request in flight, then closes.
    let (stop, stopping) = watch::channel(());
    let connections = TaskTracker::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY, a second small frame written before the
        // client acknowledges the first (an ack right after a
        // message_received) waits for the client's delayed ACK: ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(HYPER_MAX_BUF)
            .max_headers(HYPER_MAX_HEADERS)
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                // A client that went away, or one that never finished its
                // headers in time.
                tracing::debug!(%remote, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    // Every connection's `changed()` wakes up, including those that start
    // waiting after this.
    stop.send_replace(());
    drop(stop);
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the drain");
    }
    Ok(())
}
