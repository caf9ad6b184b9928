//! `secret-inject`: parses arguments, blocks signals for init mode before any thread exists,
//! resolves, then execs (or supervises) the job.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = secrets_injector::Args::parse();
    ExitCode::from(secrets_injector::main(args))
}
