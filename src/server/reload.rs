//! Reload on SIGHUP: re-read the config file and certificates, and switch to them only if
//! every part is valid. A rejected reload is logged and counted; the running config keeps
//! serving.
//!
//! What a reload changes: sources, routes, upstreams, verification, signing, limits, body
//! and timing settings of requests, and the certificate. What needs a restart (and is
//! logged as such): the listen addresses, turning TLS on or off, and connection-level
//! settings (`max_connections`, `header_timeout`, `idle_timeout`, `shutdown_timeout`), as
//! well as `[dedup]` (the running store is kept: records survive a reload).
//!
//! The shared upstream connection pools survive a reload with their warm connections; an
//! upstream with its own `ca` or `client_cert` gets new clients, so its files are re-read.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use arc_swap::ArcSwap;

use super::tls::TlsTerminator;
use crate::config::Config;
use crate::pipeline::Gateway;

/// Everything a reload swaps, and the config file to read.
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<ArcSwap<Gateway>>,
    tls: Option<Arc<TlsTerminator>>,
    /// The config in force, to tell which changes need a restart.
    running: Mutex<Config>,
}

impl Reloader {
    /// A reloader for the gateway serving `running`, which was loaded from `running.path`.
    pub fn new(
        running: Config,
        gateway: Arc<ArcSwap<Gateway>>,
        tls: Option<Arc<TlsTerminator>>,
    ) -> Self {
        Self {
            path: running.path.clone(),
            gateway,
            tls,
            running: Mutex::new(running),
        }
    }

    /// Reloads, logging and counting the result.
    ///
    /// # Errors
    /// What made the new config or certificate unusable; nothing was changed.
    pub fn reload(&self) -> anyhow::Result<()> {
        let result = self.try_reload();
        self.gateway.load().metrics().config_reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(config = %self.path.display(), "config reloaded"),
            Err(error) => tracing::error!(
                config = %self.path.display(),
                "reload rejected, the running config keeps serving: {error:#}"
            ),
        }
        result
    }

    fn try_reload(&self) -> anyhow::Result<()> {
        let config = Config::load(&self.path)?;
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        warn_about_restart_only_changes(&running, &config);
        // Prepare everything before switching anything: the new certificate and the new
        // gateway are both built, then both installed.
        let certificate = match (&self.tls, &config.server.tls) {
            (Some(tls), Some(tls_config)) => tls
                .prepare(tls_config)
                .context("the new certificate cannot be used")?,
            _ => None,
        };
        let gateway = self.gateway.load().reload(&config)?;
        if let (Some(tls), Some(certificate)) = (&self.tls, certificate) {
            tls.install(certificate);
        }
        self.gateway.store(Arc::new(gateway));
        *running = config;
        Ok(())
    }
}

fn warn_about_restart_only_changes(old: &Config, new: &Config) {
    let (a, b) = (&old.server, &new.server);
    let changed = [
        ("server.listen", a.listen != b.listen),
        ("server.tls (on/off)", a.tls.is_some() != b.tls.is_some()),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        ("server.workers", a.workers != b.workers),
        (
            "server.header_timeout",
            a.header_timeout != b.header_timeout,
        ),
        ("server.idle_timeout", a.idle_timeout != b.idle_timeout),
        (
            "server.shutdown_timeout",
            a.shutdown_timeout != b.shutdown_timeout,
        ),
        (
            "admin.listen",
            old.admin.as_ref().map(|x| x.listen) != new.admin.as_ref().map(|x| x.listen),
        ),
    ];
    for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(
            key,
            "changed in the config file: takes effect after a restart"
        );
    }
}
