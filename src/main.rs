//! The `hookgate` binary: parse the command line, set up logging, load and validate the
//! config (and TLS certificate) before binding anything, then serve until SIGTERM/SIGINT;
//! SIGHUP reloads the certificate.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hookgate::cli::{Cli, Command, LogFormat};
use hookgate::Config;
use tracing_subscriber::EnvFilter;

/// Exit status for an invalid config (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        // Before binding: a certificate that cannot be used must not even briefly take the port.
        let tls = hookgate::server::tls::TlsTerminator::for_server(&config.server)?;
        let listen = config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener
            .local_addr()
            .context("cannot read the bound address")?;
        tracing::info!(listen = %bound, config = %config.path.display(), "hookgate listening");
        let shutdown = hookgate::server::signal::shutdown_signal()
            .context("cannot install signal handlers")?;
        let reload = hookgate::server::signal::reload_on_hangup(tls.clone())
            .context("cannot install the SIGHUP handler")?;
        tokio::spawn(reload);
        let gateway = std::sync::Arc::new(hookgate::pipeline::Gateway::from_config(&config)?);
        hookgate::server::serve_with_tls(listener, gateway, &config.server, tls, shutdown).await
    })
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
