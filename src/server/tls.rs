//! TLS termination: the `[server.tls]` PEM files (or an ephemeral self-signed certificate)
//! become a rustls `ServerConfig` that offers TLS 1.2 and 1.3 only, with ALPN `h2` and
//! `http/1.1` so that `auto::Builder` gets HTTP/2 over TLS. The handshake runs in each
//! connection's own task under a timeout ([`TlsTerminator::accept`]), and the certificate can
//! be swapped while serving ([`TlsTerminator::prepare`], then [`TlsTerminator::install`], by
//! the SIGHUP reload in [`super::reload`]).
//!
//! The PEM readers here are also used for upstream TLS files (`ca`, `client_cert`,
//! `client_key`), both when the config is validated and when the upstream clients are built.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ServerConfig, TlsConfig};

/// ALPN protocols offered, most preferred first: h2 lets one connection carry many events.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The only protocol versions spoken, as the contract requires (rustls has nothing older).
pub static PROTOCOL_VERSIONS: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// Names the `self_signed = true` certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The crypto provider of every TLS config in the crate, server and upstream side alike.
///
/// Passed explicitly rather than installed as the process default, so that library users
/// (and tests) get the same provider without depending on `main`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === TLS files ===

/// A TLS file that cannot be used. Every message names the file; the cause is part of the
/// message because these end up as one-line config problems and startup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file is missing or unreadable.
    #[error("cannot read {}: {cause}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM: {cause}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found.
        cause: pem::Error,
    },
    /// The file has no `CERTIFICATE` block.
    #[error("{} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file has no private key block.
    #[error(
        "{} holds no private key (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
         or \"BEGIN EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is of a type or encoding the crypto provider cannot sign with.
    #[error("{}: unusable private key: {cause}", path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        cause: rustls::Error,
    },
    /// A certificate that does not parse (or cannot be a trust anchor, for `ca`).
    #[error("{}: unusable certificate: {cause}", path.display())]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What rustls said.
        cause: rustls::Error,
    },
    /// The key is not the one the certificate was issued for.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl TlsFileError {
    /// The file at fault (the key file for a mismatch), so a config problem can be reported
    /// at the key that names it.
    pub fn path(&self) -> &Path {
        match self {
            Self::Unreadable { path, .. }
            | Self::Malformed { path, .. }
            | Self::NoCertificate { path }
            | Self::NoKey { path }
            | Self::UnusableKey { path, .. }
            | Self::BadCertificate { path, .. } => path,
            Self::KeyMismatch { key, .. } => key,
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|cause| TlsFileError::Unreadable {
        path: path.to_path_buf(),
        cause,
    })
}

/// Every certificate in the PEM file at `path`, in file order (leaf first for a chain).
///
/// # Errors
/// If the file cannot be read, is not PEM, or holds no certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| TlsFileError::Malformed {
            path: path.to_path_buf(),
            cause,
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`: PKCS#8 (RSA, ECDSA, Ed25519), SEC1 (EC)
/// or PKCS#1 (RSA).
///
/// # Errors
/// If the file cannot be read, is not PEM, or holds no private key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|cause| match cause {
        pem::Error::NoItemsFound => TlsFileError::NoKey {
            path: path.to_path_buf(),
        },
        cause => TlsFileError::Malformed {
            path: path.to_path_buf(),
            cause,
        },
    })
}

/// The certificates in the PEM file at `path`, each checked to be usable as a trust anchor
/// (for an upstream's private `ca`).
///
/// # Errors
/// As [`read_certs`], or if a certificate cannot be a trust anchor.
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = read_certs(path)?;
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|cause| TlsFileError::BadCertificate {
                path: path.to_path_buf(),
                cause,
            })?;
    }
    Ok(certs)
}

/// The chain at `cert` with the key at `key`, checked to belong together: a mismatch would
/// otherwise only show as failed handshakes.
///
/// # Errors
/// As [`read_certs`] and [`read_key`]; if the key is unusable, the leaf certificate does not
/// parse, or the key does not match it.
pub fn read_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsFileError> {
    let chain = read_certs(cert)?;
    let der = read_key(key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(der)
        .map_err(|cause| TlsFileError::UnusableKey {
            path: key.to_path_buf(),
            cause,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsFileError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // Also `InconsistentKeys::Unknown`: ring always knows the public key, so a key whose
        // match cannot be checked is refused rather than trusted.
        Err(cause) => Err(TlsFileError::BadCertificate {
            path: cert.to_path_buf(),
            cause,
        }),
    }
}

// === impl TlsTerminator ===

/// The serving certificate. A handshake takes one `Arc` of it and keeps it, so a reload only
/// changes what new connections get; open connections are untouched.
#[derive(Debug)]
struct CertSlot(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The TLS side of the gateway listener: accepts TLS connections and reloads the certificate.
/// Shared (`Arc`) by the accept loop and whoever triggers reloads.
pub struct TlsTerminator {
    acceptor: TlsAcceptor,
    config: Arc<rustls::ServerConfig>,
    cert: Arc<CertSlot>,
    provider: Arc<CryptoProvider>,
    handshake_timeout: Duration,
}

impl TlsTerminator {
    /// The terminator for `server`, if it has `[server.tls]`; the handshake timeout is
    /// `header_timeout` (the client must be as prompt with its handshake as with its head).
    ///
    /// # Errors
    /// As [`TlsTerminator::from_config`].
    pub fn for_server(server: &ServerConfig) -> anyhow::Result<Option<Arc<Self>>> {
        server
            .tls
            .as_ref()
            .map(|tls| Self::from_config(tls, server.header_timeout).map(Arc::new))
            .transpose()
    }

    /// Loads (or generates) the certificate once and builds the TLS config.
    ///
    /// # Errors
    /// If a PEM file cannot be used (the message names it), or a self-signed certificate
    /// cannot be generated.
    pub fn from_config(tls: &TlsConfig, handshake_timeout: Duration) -> anyhow::Result<Self> {
        let provider = provider();
        let certified = match tls {
            TlsConfig::Files { cert, key } => read_certified_key(cert, key, &provider)?,
            TlsConfig::SelfSigned => self_signed(&provider)?,
        };
        let cert = Arc::new(CertSlot(ArcSwap::from_pointee(certified)));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&PROTOCOL_VERSIONS)
            .context("the TLS provider does not support TLS 1.2 and 1.3")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::clone(&config)),
            config,
            cert,
            provider,
            handshake_timeout,
        })
    }

    /// Runs the TLS handshake on `stream`, at most the handshake timeout.
    ///
    /// # Errors
    /// If the handshake fails (plain HTTP, an unsupported version, a client that rejects the
    /// certificate...) or times out (`ErrorKind::TimedOut`).
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(handshake) => handshake,
            Err(_elapsed) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// Loads the certificate `tls` names (a config being reloaded), without serving it:
    /// [`TlsTerminator::install`] does that once everything else in the new config is valid
    /// too. `None` for a self-signed certificate, which is kept.
    ///
    /// # Errors
    /// If the files cannot be used together (the message names the file).
    pub fn prepare(&self, tls: &TlsConfig) -> anyhow::Result<Option<CertifiedKey>> {
        match tls {
            TlsConfig::Files { cert, key } => {
                Ok(Some(read_certified_key(cert, key, &self.provider)?))
            }
            TlsConfig::SelfSigned => Ok(None),
        }
    }

    /// Serves `certified` to new connections; open connections keep theirs.
    pub fn install(&self, certified: CertifiedKey) {
        self.cert.0.store(Arc::new(certified));
    }

    /// The certificate new connections get now.
    pub fn certificate(&self) -> Arc<CertifiedKey> {
        self.cert.0.load_full()
    }

    /// The rustls server config (versions and ALPN as documented above).
    pub fn server_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// How long the ephemeral certificate is valid. It is regenerated at every start; a short
/// life keeps TLS scanners' lifespan checks (and anyone who pinned it) honest.
pub const SELF_SIGNED_VALIDITY_DAYS: i64 = 30;

/// A fresh certificate for [`SELF_SIGNED_NAMES`], valid for [`SELF_SIGNED_VALIDITY_DAYS`].
fn self_signed(provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|&n| n.to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names)
        .context("cannot describe a self-signed certificate")?;
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clients whose clocks run behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(SELF_SIGNED_VALIDITY_DAYS);
    let key_pair = rcgen::KeyPair::generate().context("cannot generate a self-signed key")?;
    let cert = params
        .self_signed(&key_pair)
        .context("cannot generate a self-signed certificate")?;
    let der = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let signing_key = provider
        .key_provider
        .load_private_key(der)
        .context("cannot use the generated self-signed key")?;
    tracing::warn!(
        names = %SELF_SIGNED_NAMES.join(", "),
        "serving an ephemeral SELF-SIGNED certificate: for development only; \
         clients will not trust it and it changes at every start"
    );
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_config_offers_h2_then_http11() {
        // The versions are checked end to end (tests/tls.rs): rustls keeps them private.
        let tls = TlsTerminator::from_config(&TlsConfig::SelfSigned, Duration::from_secs(1))
            .expect("self-signed");
        assert_eq!(
            tls.server_config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn self_signed_reload_keeps_the_certificate() {
        let tls = TlsTerminator::from_config(&TlsConfig::SelfSigned, Duration::from_secs(1))
            .expect("self-signed");
        let before = tls.certificate();
        let prepared = tls.prepare(&TlsConfig::SelfSigned).expect("no-op reload");
        assert!(prepared.is_none(), "nothing to install");
        assert_eq!(before.cert, tls.certificate().cert);
    }

    #[test]
    fn missing_files_are_named() {
        let missing = Path::new("/nonexistent/hookgate/cert.pem");
        let error = read_certs(missing).expect_err("missing");
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/hookgate/cert.pem: "),
            "{error}"
        );
        assert_eq!(error.path(), missing);
    }
}
