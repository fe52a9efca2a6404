//! The `hookgate` binary: parse the command line, set up logging, load and validate the
//! config (and TLS certificate) before binding anything, then serve until SIGTERM/SIGINT;
//! SIGHUP reloads the certificate.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hookgate::admin::{serve_admin, AdminState};
use hookgate::cli::{Cli, Command, LogFormat};
use hookgate::metrics::Metrics;
use hookgate::pipeline::Gateway;
use hookgate::server::reload::Reloader;
use hookgate::server::tls::TlsTerminator;
use hookgate::server::{signal, workers};
use hookgate::Config;
use tracing_subscriber::EnvFilter;

// glibc's malloc showed up as ~16% of the forward path's CPU in a perf profile (many small,
// short-lived allocations across two threads); mimalloc handles that pattern better.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Opts this process out of transparent huge pages.
///
/// mimalloc's memory is eligible for huge pages under Linux's default
/// `transparent_hugepage=madvise`, and the kernel then faults it in 2 MiB at a time, ahead of
/// use. Measured with `examples/dedup_memory.rs`: a full store of 1,000,000 records levels
/// off at 198 MiB resident with huge pages and 178 MiB without. Best effort: elsewhere,
/// or if the kernel refuses, nothing changes. (Here, not in the library, which has no
/// unsafe code; `examples/dedup_memory.rs` does the same.)
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours; it
        // sets a flag on this process, inherited by the threads it starts later.
        let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
        if refused {
            eprintln!(
                "hookgate: could not opt out of transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Exit status for an invalid config (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // First, before the allocator has handed out much (see the function's docs).
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    // The demo prints its own story; its logs would only interleave with it.
    let default_level = match cli.command {
        Some(Command::Demo) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            println!("{}: OK", cli.config.display());
            print!("{}", config.route_table());
            ExitCode::SUCCESS
        }
        Command::Demo => match runtime().and_then(|rt| rt.block_on(hookgate::demo::run(config))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("hookgate demo: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error:#}");
                eprintln!("hookgate: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The control runtime: the demo, or (for `serve`) signals, reloads, the admin endpoints and
/// background sweeps. Serving runs on worker threads of its own (`server::workers`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        // Before binding: a certificate that cannot be used must not even briefly take the port.
        let tls = TlsTerminator::for_server(&config.server)?;
        let listen = config.server.listen;
        let listeners = workers::bind(listen, config.server.workers)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let admin_listener = match &config.admin {
            Some(admin) => Some(bind(admin.listen).await?),
            None => None,
        };
        let shutdown = signal::shutdown_signal().context("cannot install signal handlers")?;

        let metrics = Arc::new(Metrics::new());
        let gateway = Gateway::with_metrics(&config, Arc::clone(&metrics))?;
        let gateway = Arc::new(ArcSwap::from_pointee(gateway));
        let reloader = Reloader::new(config.clone(), Arc::clone(&gateway), tls.clone());
        let reload = signal::reload_on_hangup(Arc::new(reloader))
            .context("cannot install the SIGHUP handler")?;
        tokio::spawn(reload);

        let admin = Arc::new(AdminState::new(metrics, Arc::clone(&gateway)));
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let admin_task = admin_listener.map(|listener| {
            let stop = async {
                let _ = admin_stop_rx.await;
            };
            tokio::spawn(serve_admin(listener, Arc::clone(&admin), stop))
        });
        tracing::info!(
            listen = %listeners
                .first()
                .and_then(|listener| listener.local_addr().ok())
                .unwrap_or(listen),
            workers = listeners.len(),
            admin = %admin_addr.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
            config = %config.path.display(),
            "hookgate listening"
        );

        // The admin listener stays up through the drain, with /readyz saying 503.
        let draining = Arc::clone(&admin);
        let shutdown = async move {
            shutdown.await;
            draining.start_draining();
        };
        let served =
            workers::serve_workers(listeners, gateway, &config.server, tls, shutdown).await;
        let _ = admin_stop_tx.send(());
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        tracing::info!("hookgate stopped");
        served
    })
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Logs go to stdout; `RUST_LOG` filters them (e.g. `RUST_LOG=hookgate=debug`).
fn init_logging(format: Option<LogFormat>, default_level: &str) {
    // rustls warns on every odd handshake (e.g. an IP address in SNI): at the default level a
    // remote client could flood the log at will, so only its errors are shown by default.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},rustls=error")));
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(hookgate::logbuf::Stdout);
    match format {
        LogFormat::Json => builder.event_format(hookgate::logformat::JsonLine).init(),
        LogFormat::Text => builder.init(),
    }
}
