//! `secretfs`: parses arguments, runs the sidecar, maps failures to exit codes.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = secrets_fs::Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(secrets_fs::run(args)) {
        Ok(code) => code,
        Err(e) => {
            let report = secrets_fs::failure::report(&e);
            for item in &report.errors {
                eprintln!("ERROR: {}", item.line());
            }
            ExitCode::from(report.code)
        }
    }
}
