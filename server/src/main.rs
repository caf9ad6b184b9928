//! `secretd`: parses arguments and runs the service.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;

/// How long blocking work (the audit writer flushing its last lines, a store write) may run on
/// after the server has stopped: an audit file that no longer takes writes must not keep the
/// process from exiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// mimalloc: glibc's malloc and free were 7% of a secret read's CPU time (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = secrets_server::Args::parse();
    let json = args.log_format == secrets_server::LogFormat::Json;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if json {
        // One JSON object a line: timestamp, level, target and the event's fields, the message
        // among them at the top level.
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fail(json, &format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(secrets_server::run(args));
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(code) => code,
        Err(e) => {
            fail(json, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The last word of a failed start: a JSON log line with --log-format json, else `ERROR: ...`.
fn fail(json: bool, message: &str) {
    if json {
        tracing::error!("{message}");
    } else {
        eprintln!("ERROR: {message}");
    }
}
