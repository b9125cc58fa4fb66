//! The command line: `serve` and `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "hf-edge",
    version,
    about = "An edge cache for the Hugging Face Hub"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the embedded default config unless --config is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit (0 = valid, 2 = invalid).
    CheckConfig { file: PathBuf },
    /// Print the embedded default config (a documented starting point).
    DefaultConfig,
}

/// Exit code for a bad config or usage, as documented in the README.
const EXIT_CONFIG: u8 = 2;

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let cfg = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => return config_error(&e),
                },
                None => Config::embedded_default(),
            };
            match crate::server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hf-edge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::DefaultConfig => {
            print!("{}", crate::config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
    }
}

fn config_error(e: &crate::config::ConfigError) -> ExitCode {
    eprintln!("hf-edge: config error: {e}");
    ExitCode::from(EXIT_CONFIG)
}
