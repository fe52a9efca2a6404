//! The admin listener: `/healthz` (alive), `/readyz` (ready for traffic), `/metrics`.
//!
//! It runs until the process exits: while the gateway drains after SIGTERM, `/readyz`
//! answers 503 so load balancers stop sending, but health and metrics stay visible.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};
use crate::pipeline::Gateway;

/// Admin requests are tiny; a client slower than this is cut off.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoints report on.
pub struct AdminState {
    metrics: Arc<Metrics>,
    gateway: Arc<ArcSwap<Gateway>>,
    draining: AtomicBool,
}

impl AdminState {
    /// Reports on `gateway` (the current one, swapped on reload) and `metrics`.
    pub fn new(metrics: Arc<Metrics>, gateway: Arc<ArcSwap<Gateway>>) -> Self {
        Self {
            metrics,
            gateway,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 503: the gateway is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if !self.gateway.load().ready().await {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "dedup backend unreachable\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/metrics" => {
                let gateway = self.gateway.load();
                self.metrics
                    .set_gauges(gateway.dedup().record_count(), gateway.in_flight());
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves the admin endpoints on `listener` until `stop` resolves (at process exit).
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(crate::server::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(state.answer(&request).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}
