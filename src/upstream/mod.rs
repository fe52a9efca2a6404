//! The upstream HTTP clients: pooled keep-alive connections, HTTP/1.1 and (over TLS, by ALPN)
//! HTTP/2, rustls with the webpki roots.
//!
//! A plain-HTTP upstream gets hookgate's own HTTP/1.1 connections ([`plain`]), its pool
//! resolved when the config is loaded; an HTTPS upstream gets hyper-util's pooled client
//! (TLS, HTTP/2 by ALPN), which costs more per request ([`plain`] says how much).
//!
//! A pool is bound to one TLS config, so there is one shared client for every upstream with
//! default TLS, and a dedicated one for each upstream that sets `ca` (a private CA, trusted in
//! addition to the webpki roots) or `client_cert` + `client_key` (mTLS). [`Clients`] picks.
//!
//! Each of those is really one client per worker thread ([`WorkerClients`]): a pooled
//! connection is driven by a task on the runtime that opened it, so a pool shared by every
//! worker would have a forward on one thread wake the other for each upstream answer.

mod plain;

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::builderstates::WantsSchemes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, RootCertStore};

use crate::config::Upstream;
use crate::server::tls;

pub use plain::Answer;
use plain::PlainPool;

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream host.
pub const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// TCP connect timeout; the upstream's `timeout` still bounds the whole exchange.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pooled client type; clones share the pool.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

thread_local! {
    static WORKER_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index`: from now on [`WorkerClients::current`] gives
/// it that worker's clients. Threads that never call this (the control thread, tests) are
/// worker 0.
pub fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|worker| worker.set(index));
}

/// One pooled client per worker thread, all with the same TLS settings; clones share them.
#[derive(Clone)]
pub struct WorkerClients(Arc<[HttpClient]>);

impl WorkerClients {
    fn new(connector: &HttpsConnector<HttpConnector>, workers: usize) -> Self {
        Self(
            (0..workers.max(1))
                .map(|_| pooled(connector.clone()))
                .collect(),
        )
    }

    /// Whether `other` is these very pools (a clone), not pools built alike.
    #[cfg(test)]
    pub(crate) fn same_pools(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The calling worker's client (see [`set_worker_index`]).
    pub fn current(&self) -> &HttpClient {
        let index = WORKER_INDEX.with(Cell::get);
        &self.0[index % self.0.len()]
    }
}

impl std::fmt::Debug for WorkerClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerClients({} pools)", self.0.len())
    }
}

/// One plain-HTTP pool per worker thread, for one `host:port`; clones share them.
#[derive(Clone, Debug)]
pub struct WorkerPools(Arc<[Arc<PlainPool>]>);

impl WorkerPools {
    fn new(address: &str, workers: usize) -> Self {
        Self(
            (0..workers.max(1))
                .map(|_| Arc::new(PlainPool::new(address.to_owned())))
                .collect(),
        )
    }

    /// The calling worker's pool (see [`set_worker_index`]).
    fn current(&self) -> &Arc<PlainPool> {
        let index = WORKER_INDEX.with(Cell::get);
        &self.0[index % self.0.len()]
    }
}

/// How one upstream is reached, and the request target and `host` header its requests carry
/// (made once, not per request).
#[derive(Clone, Debug)]
pub enum UpstreamClient {
    /// hyper-util's pooled client: HTTPS (TLS, HTTP/2 by ALPN).
    Pooled {
        /// The pools, one per worker.
        clients: WorkerClients,
        /// The upstream's URL, which this client takes as the request's URI.
        url: Uri,
        /// The URL's `host` header.
        host: Option<HeaderValue>,
    },
    /// hookgate's own keep-alive HTTP/1.1 connections: plain HTTP.
    Plain {
        /// The pools of the URL's `host:port`, one per worker.
        pools: WorkerPools,
        /// The URL's path and query: on a connection of its own, the request line carries
        /// only these.
        path: Uri,
        /// The URL's `host` header.
        host: Option<HeaderValue>,
    },
}

impl UpstreamClient {
    /// Sends `request` to the upstream (its URI and `host` header are set here) on the calling
    /// worker's connections and reads the whole answer, refusing a body over `max_body` bytes.
    ///
    /// # Errors
    /// If no connection could be made, no complete HTTP answer came, or the body is too large.
    pub async fn exchange(
        &self,
        mut request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> anyhow::Result<Answer> {
        let (Self::Pooled { host, .. } | Self::Plain { host, .. }) = self;
        if let Some(host) = host {
            request.headers_mut().insert(HOST, host.clone());
        }
        match self {
            Self::Pooled { clients, url, .. } => {
                *request.uri_mut() = url.clone();
                read_whole(clients.current().request(request).await?, max_body).await
            }
            Self::Plain { pools, path, .. } => {
                *request.uri_mut() = path.clone();
                pools.current().exchange(request, max_body).await
            }
        }
    }

    /// Whether `other` is these very pools (a clone), not pools built alike.
    #[cfg(test)]
    pub(crate) fn same_pools(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Pooled { clients: this, .. }, Self::Pooled { clients: other, .. }) => {
                this.same_pools(other)
            }
            (Self::Plain { pools: this, .. }, Self::Plain { pools: other, .. }) => {
                Arc::ptr_eq(&this.0, &other.0)
            }
            _ => false,
        }
    }
}

/// `response` with its body read whole, refusing a body over `max_body` bytes.
async fn read_whole(
    response: http::Response<hyper::body::Incoming>,
    max_body: usize,
) -> anyhow::Result<Answer> {
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|error| anyhow::anyhow!(error))
        .context("reading the answer's body")?
        .to_bytes();
    Ok((parts, body))
}

/// The clients of every configured upstream, built with each gateway (at startup and on
/// reload).
pub struct Clients {
    default: WorkerClients,
    /// By upstream name; only upstreams with TLS settings of their own.
    dedicated: HashMap<String, WorkerClients>,
    /// By `host:port`: the plain-HTTP upstreams' pools.
    plain: HashMap<String, WorkerPools>,
}

impl Clients {
    /// The default clients, those of each upstream that sets `ca` or `client_cert`, and the
    /// pools of each plain-HTTP address, each with one pool per worker thread. On a reload,
    /// `previous` are the running gateway's clients: their default and plain-HTTP pools are
    /// kept, with their warm connections (their settings cannot change); an upstream's own
    /// clients are built anew, since a reload must re-read its `ca` and `client_cert` files.
    ///
    /// # Errors
    /// If an upstream's TLS files cannot be used (they were checked when the config was
    /// loaded, so only if they changed since), naming the upstream and the file; or if the TLS
    /// provider offers no usable protocol versions (a build problem, not input).
    pub fn from_config(
        upstreams: &[Upstream],
        workers: usize,
        previous: Option<&Clients>,
    ) -> anyhow::Result<Self> {
        let mut dedicated = HashMap::new();
        let mut plain: HashMap<String, WorkerPools> = HashMap::new();
        for upstream in upstreams {
            if let Some(address) = plain::address_of(&upstream.url) {
                if let Entry::Vacant(slot) = plain.entry(address) {
                    let kept = previous.and_then(|previous| previous.plain.get(slot.key()));
                    let pools = kept
                        .cloned()
                        .unwrap_or_else(|| WorkerPools::new(slot.key(), workers));
                    slot.insert(pools);
                }
            } else if let Some(config) =
                tls_config(upstream).with_context(|| format!("upstream {:?}", upstream.name))?
            {
                let connector = connector(HttpsConnectorBuilder::new().with_tls_config(config));
                dedicated.insert(
                    upstream.name.clone(),
                    WorkerClients::new(&connector, workers),
                );
            }
        }
        let default = match previous {
            Some(previous) => previous.default.clone(),
            None => WorkerClients::new(
                &connector(
                    HttpsConnectorBuilder::new().with_provider_and_webpki_roots(tls::provider())?,
                ),
                workers,
            ),
        };
        Ok(Self {
            default,
            dedicated,
            plain,
        })
    }

    /// The clients to forward to `upstream` with (one of those [`Clients::from_config`] was
    /// given); cloning them is cheap and shares their pools.
    pub fn for_upstream(&self, upstream: &Upstream) -> UpstreamClient {
        let url = &upstream.url;
        let host = host_header(url);
        let plain = plain::address_of(url).and_then(|address| self.plain.get(&address));
        match plain {
            Some(pools) => UpstreamClient::Plain {
                pools: pools.clone(),
                path: url
                    .path_and_query()
                    .map_or_else(|| Uri::from_static("/"), |path| Uri::from(path.clone())),
                host,
            },
            None => UpstreamClient::Pooled {
                clients: self
                    .dedicated
                    .get(&upstream.name)
                    .unwrap_or(&self.default)
                    .clone(),
                url: url.clone(),
                host,
            },
        }
    }
}

/// The `host` header hyper-util's client sets for `url`: the host, with the port unless it is
/// the scheme's default. Made once per upstream: hyper-util's client would otherwise format it
/// on every request, and hyper's own connections set none.
fn host_header(url: &Uri) -> Option<HeaderValue> {
    let host = url.host()?;
    let default_port = match url.scheme_str() {
        Some("https" | "wss") => 443,
        _ => 80,
    };
    match url.port_u16() {
        Some(port) if port != default_port => HeaderValue::from_str(&format!("{host}:{port}")).ok(),
        _ => HeaderValue::from_str(host).ok(),
    }
}

/// The TLS config of an upstream with its own `ca` or `client_cert`; `None` for the default.
fn tls_config(upstream: &Upstream) -> anyhow::Result<Option<ClientConfig>> {
    if upstream.ca.is_none() && upstream.client_cert.is_none() {
        return Ok(None);
    }
    // A private CA adds to the public roots: the upstream may still move to a public cert.
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &upstream.ca {
        for cert in tls::read_roots(ca)? {
            roots.add(cert)?;
        }
    }
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&tls::PROTOCOL_VERSIONS)?
        .with_root_certificates(roots);
    let config = match &upstream.client_cert {
        None => builder.with_no_client_auth(),
        Some(client) => {
            // The same loader as the server's: the key is checked to match the certificate
            // now, where rustls would only fail in a handshake.
            let certified = tls::read_certified_key(&client.cert, &client.key, &tls::provider())?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
    };
    Ok(Some(config))
}

fn connector(builder: HttpsConnectorBuilder<WantsSchemes>) -> HttpsConnector<HttpConnector> {
    builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http_connector())
}

fn http_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The HTTPS connector wraps this one: it must let https:// URIs through.
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http
}

fn pooled(https: HttpsConnector<HttpConnector>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{edit, load};

    /// A plain-HTTP upstream's requests carry only the path and query, and the URL's `host`
    /// (hyper's own connections would send none).
    #[tokio::test]
    async fn a_plain_upstream_gets_the_path_and_the_urls_host() {
        let mut upstream = plain::tests::upstream(plain::tests::Then::KeepOpen, "ok").await;
        let url = format!("\"{}\"", upstream.url);
        let config = load(&edit("\"http://127.0.0.1:3000/hook\"", &url)).unwrap();
        let client = Clients::from_config(&config.upstreams, 1, None)
            .unwrap()
            .for_upstream(&config.upstreams[0]);
        assert!(matches!(client, UpstreamClient::Plain { .. }));
        let request = Request::post("/ignored").body(Full::new(Bytes::from_static(b"{}")));
        let (parts, body) = client.exchange(request.unwrap(), 1024).await.unwrap();
        assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok"[..]));
        let head = upstream.heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /hook?x=1 http/1.1\r\n"), "{head}");
        let host = format!("host: {}\r\n", upstream.url.authority().unwrap());
        assert!(head.contains(&host), "{head}");
    }

    #[test]
    fn the_host_header_is_the_one_the_client_would_set() {
        for (url, host) in [
            ("http://127.0.0.1:8080/hook", "127.0.0.1:8080"),
            ("http://app.internal/hook", "app.internal"),
            ("http://app.internal:80/hook", "app.internal"),
            ("https://app.internal:443/hook", "app.internal"),
            ("https://app.internal:8443/hook", "app.internal:8443"),
            ("http://app.internal:443/hook", "app.internal:443"),
            ("https://[::1]:9443/hook", "[::1]:9443"),
            ("http://[::1]:9000/", "[::1]:9000"),
        ] {
            let url: http::Uri = url.parse().unwrap();
            assert_eq!(host_header(&url).unwrap(), host, "{url}");
        }
    }
}
