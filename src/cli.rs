//! Command line: `hookgate [serve|check|demo] [--config PATH] [--log-format json|text]`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Default config path when neither `--config` nor `HOOKGATE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "./config.toml";

/// hookgate: a webhook gateway in front of legacy apps.
#[derive(Debug, Parser)]
#[command(name = "hookgate", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Config file.
    #[arg(long, global = true, env = "HOOKGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log format; default: text on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the config and print the route table; exit non-zero if it is invalid.
    Check,
    /// Show a round trip: start an example legacy app at the config's local upstream
    /// addresses, run the gateway, post sample FirstPromoter events, print the answers.
    Demo,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_are_accepted_before_or_after_the_subcommand() {
        let before = Cli::try_parse_from(["hookgate", "--config", "a.toml", "check"]).unwrap();
        let after = Cli::try_parse_from(["hookgate", "check", "--log-format", "json"]).unwrap();
        assert_eq!(before.config, PathBuf::from("a.toml"));
        assert_eq!(before.command, Some(Command::Check));
        assert_eq!(after.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn no_subcommand_means_serve() {
        let cli = Cli::try_parse_from(["hookgate", "--log-format", "text"]).unwrap();
        assert_eq!(cli.command, None);
    }
}
