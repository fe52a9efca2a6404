//! Process signals: the one future that resolves when the process is asked to stop (SIGTERM
//! or SIGINT), and the SIGHUP handler that reloads certificates.

use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::tls::TlsTerminator;

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

/// Reloads the TLS certificate on every SIGHUP, for as long as the returned future runs
/// (spawn it). A rejected reload is logged and the previous certificate keeps serving.
///
/// The handler is installed even without TLS: SIGHUP's default action would end the process.
///
/// # Errors
/// If the signal handler cannot be installed.
pub fn reload_on_hangup(
    tls: Option<Arc<TlsTerminator>>,
) -> std::io::Result<impl Future<Output = ()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            let Some(tls) = tls.clone() else {
                tracing::info!(
                    "SIGHUP: no certificates to reload (config reload is not built yet)"
                );
                continue;
            };
            // Off the async workers: it reads files.
            match tokio::task::spawn_blocking(move || tls.reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!("{error:#}"),
                Err(error) => tracing::error!(%error, "certificate reload failed"),
            }
        }
    })
}
