//! `neuro-docs`: writes the man pages and shell completion scripts of every binary of the
//! project (`neuro`, `secretd`, `secretfs`, `secret-inject`) from their clap definitions, for
//! packagers: `neuro-docs man DIR`, `neuro-docs completion SHELL BINARY`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

/// Man pages and completion scripts of the secrets binaries.
#[derive(Debug, Parser)]
#[command(name = "neuro-docs", version)]
enum Docs {
    /// Write BINARY.1 for each binary (and BINARY-SUBCOMMAND.1 for each subcommand) into DIR
    Man {
        /// Created when missing
        dir: PathBuf,
    },
    /// Print the completion script of BINARY for SHELL
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        #[arg(value_enum)]
        binary: Binary,
    },
}

/// The binaries documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Binary {
    Neuro,
    Secretd,
    Secretfs,
    SecretInject,
}

impl Binary {
    const ALL: [Binary; 4] = [
        Binary::Neuro,
        Binary::Secretd,
        Binary::Secretfs,
        Binary::SecretInject,
    ];

    fn command(self) -> clap::Command {
        match self {
            Binary::Neuro => secrets_cli::Cli::command(),
            Binary::Secretd => secrets_server::Args::command(),
            Binary::Secretfs => secrets_fs::Args::command(),
            Binary::SecretInject => secrets_injector::Args::command(),
        }
    }
}

fn main() -> ExitCode {
    match run(Docs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(docs: Docs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match docs {
        Docs::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating '{}'", dir.display()))?;
            for b in Binary::ALL {
                clap_mangen::generate_to(b.command(), &dir)
                    .with_context(|| format!("writing man pages into '{}'", dir.display()))?;
            }
            Ok(())
        }
        Docs::Completion { shell, binary } => {
            let mut out = std::io::stdout().lock();
            secrets_cli::completion(shell, &mut binary.command(), &mut out);
            out.flush()?;
            Ok(())
        }
    }
}
