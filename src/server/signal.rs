//! Process signals: the one future that resolves when the process is asked to stop (SIGTERM
//! or SIGINT), and the SIGHUP handler that reloads certificates.

use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::reload::Reloader;

/// Resolves on SIGTERM or SIGINT (Ctrl-C), logging which one arrived.
///
/// # Errors
/// If the signal handlers cannot be installed.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

/// Reloads the config and certificates on every SIGHUP ([`Reloader::reload`]), for as long
/// as the returned future runs (spawn it). A rejected reload is logged and counted, and the
/// running config keeps serving.
///
/// # Errors
/// If the signal handler cannot be installed.
pub fn reload_on_hangup(reloader: Arc<Reloader>) -> std::io::Result<impl Future<Output = ()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading config and certificates");
            let reloader = Arc::clone(&reloader);
            // Off the async workers: it reads files. The result is logged by `reload`.
            if let Err(error) = tokio::task::spawn_blocking(move || reloader.reload()).await {
                tracing::error!(%error, "the reload task failed");
            }
        }
    })
}
