//! `neuro`: parses arguments, runs the command, maps failures to exit codes.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match secrets_cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return secrets_cli::usage_error(&e),
    };
    match secrets_cli::run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ERROR: {}", secrets_cli::error_line(&e));
            ExitCode::from(secrets_cli::exit_code(&e))
        }
    }
}
