//! `neuro`: the user's command line for platform secrets.

pub mod args;
pub mod config;
pub mod manifest;
pub mod private;
pub mod run;
pub mod table;

use secrets_core::exit::ExitClass;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use secrets_client::{Client, ClientConfig, ClientError, Failure};
use secrets_core::api::Grant;
use secrets_core::{
    Action, ClusterName, JobId, SecretBytes, SecretRef, SecretUri, Token, UriContext, UserName,
};

use crate::args::{ResourceArg, TokenParser, key_or_uri, resource_uri};
use crate::config::Config;

/// The text after `--help`'s options: the connection settings, then the exit codes as
/// `ExitClass::help` words every binary's.
fn after_help() -> String {
    let codes = ExitClass::help(&[
        (ExitClass::Ok, ""),
        (ExitClass::Other, "e.g. the config file cannot be written"),
        (
            ExitClass::Usage,
            "an unknown command or flag, a missing or extra argument",
        ),
        (
            ExitClass::Invalid,
            "a malformed user name, key, URI, job id, token or action (caught\n\
             before any request), a value file that cannot be read, or a key, URI, value or\n\
             request the service rejects",
        ),
        (ExitClass::Unavailable, "connection refused, 5xx, timeout"),
        (ExitClass::NotFound, ""),
        (ExitClass::Forbidden, ""),
    ]);
    format!(
        "Connection: --url and --ca-file fall back to NEURO_URL and NEURO_CA_FILE,\n\
         then to what `neuro login` saved; NEURO_TOKEN overrides the saved token.\n\n{codes}"
    )
}

/// The platform secrets command line.
#[derive(Debug, Parser)]
#[command(name = "neuro", version, about = "Store secrets, share them, and hand them to jobs", after_help = after_help())]
pub struct Cli {
    /// --url (else NEURO_URL, else the URL `neuro login` saved) and --ca-file (else
    /// NEURO_CA_FILE, else the one saved)
    #[command(flatten)]
    pub service: secrets_client::ServiceArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Save the service URL and your token (mode 0600, in the XDG config dir)
    Login {
        /// Your token, as printed by `neuro admin user add` (surrounding whitespace is dropped)
        #[arg(long, env = "NEURO_TOKEN", hide_env_values = true, value_parser = TokenParser)]
        token: Token,
    },
    /// Create, list, read and delete secrets
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Give USER an action on a secret (or on all of an owner's secrets): read, write or manage
    #[command(
        after_help = "Examples:\n  neuro share secret:secret-password bob\n  neuro share secret:secret-password bob write\n  neuro share secret:/alice bob   # every secret of alice's, present and future"
    )]
    Share {
        /// secret:KEY, secret:/OWNER/KEY, secret://CLUSTER/OWNER/KEY, or secret:/OWNER for all of OWNER's secrets
        #[arg(value_parser = resource_uri)]
        uri: ResourceArg,
        /// Who receives the permission
        user: UserName,
        /// read (default), write (also overwrite and delete) or manage (also share and revoke)
        #[arg(default_value = "read")]
        action: Action,
    },
    /// Show and revoke permissions
    #[command(subcommand)]
    Acl(AclCmd),
    /// Run a command on this machine with secrets as files and environment variables
    #[command(
        after_help = "Example:\n  neuro run --volume secret:secret-password:/var/secrets/secret-password.txt \\\n    --env mypass:secret:secret-password -- sh -c 'cat /var/secrets/secret-password.txt; echo \"$mypass\"'\n\nThe files exist only in the job's private mount namespace (needs root and /dev/fuse).\nThe exit status is the command's (128+N when signal N killed it)."
    )]
    Run(run::RunArgs),
    /// Jobs on Kubernetes: a Pod manifest with the secrets sidecar; revoking a job's token
    #[command(subcommand)]
    Job(JobCmd),
    /// Operator commands (log in with the token in DATA_DIR/admin.token)
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Print a shell completion script for neuro
    #[command(
        after_help = "Examples:\n  neuro completion bash > /etc/bash_completion.d/neuro\n  neuro completion zsh > \"${fpath[1]}/_neuro\"\n  neuro completion fish > ~/.config/fish/completions/neuro.fish"
    )]
    Completion {
        /// bash, zsh, fish, elvish or powershell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Create a job and print a Kubernetes Pod manifest (with a Secret for its token) that runs
    /// CMD in IMAGE with the secrets as files and variables
    #[command(
        after_help = "Example:\n  neuro job manifest --volume secret:secret-password:/var/secrets/secret-password.txt \\\n    --env mypass:secret:secret-password --image python:3.12 -- python train.py > job.yaml\n  kubectl apply -f job.yaml\n  neuro job rm JOB_ID    # when the pod is done: revokes the job token\n\nThe output holds the job token (in a Secret, not in the pod spec): treat it as a secret.\nSee container/README.md for the images and what the sidecar needs."
    )]
    Manifest(manifest::ManifestArgs),
    /// Delete a job, revoking its token (secrets stay)
    Rm {
        /// The job id (job-HEX), as printed by `neuro job manifest`
        job_id: JobId,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, ClapArgs)]
pub struct OutputArg {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create or overwrite a secret
    #[command(
        after_help = "VALUE forms:\n  'p@$$w0rd123'     the value itself\n  @path/to/file.txt the file's bytes, exactly (~ is expanded)\n  @-                standard input\n\nExamples:\n  neuro secret add secret-password 'p@$$w0rd123'\n  neuro secret add secret-password @path/to/file.txt\n  neuro secret add secret:/alice/db-password @-   # where alice granted you write"
    )]
    Add {
        /// KEY, or secret:/OWNER/KEY for another owner's secret
        #[arg(value_parser = key_or_uri)]
        key: SecretRef,
        /// The value, @FILE or @-
        value: OsString,
    },
    /// List the secrets you may read: yours as KEY, shared ones as secret:/OWNER/KEY
    #[command(visible_alias = "list")]
    Ls {
        /// Show full secret://CLUSTER/OWNER/KEY URIs
        #[arg(long)]
        full_uri: bool,
        /// Bare names, one a line
        #[arg(short, long, conflicts_with = "output")]
        quiet: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a secret
    Rm {
        /// KEY, or secret:/OWNER/KEY for another owner's secret
        #[arg(value_parser = key_or_uri)]
        key: SecretRef,
    },
    /// Print a secret's value (bytes as they are) or write it to a file
    Get {
        /// KEY, or a URI such as secret:/alice/KEY
        #[arg(value_parser = key_or_uri)]
        key: SecretRef,
        /// Write the value to this file (mode 0600) instead of stdout; it must be a regular file
        /// or not exist yet (a link, pipe or device there is refused)
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AclCmd {
    /// What you may use (URI ACTION); with --shared, what you gave others (URI ACTION USER)
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long)]
        shared: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Take a permission back from USER
    Revoke {
        /// The URI as it was shared
        #[arg(value_parser = resource_uri)]
        uri: ResourceArg,
        user: UserName,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Manage users
    #[command(subcommand)]
    User(AdminUserCmd),
    /// Manage user tokens
    #[command(subcommand)]
    Token(AdminTokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum AdminUserCmd {
    /// Create a user; prints its token alone on stdout (shown once)
    Add { name: UserName },
    /// Remove a user (offboarding): revoke every token of NAME, job tokens included, delete
    /// its jobs and the grants it holds, and keep or delete its secrets
    #[command(
        long_about = "Remove a user (offboarding). Every token of NAME is revoked, the \
        tokens of the jobs NAME created included (running jobs lose their secrets at once), \
        its jobs are deleted, and the grants it holds are removed. Grants it gave on other \
        owners' secrets stay.\n\n--secrets keep leaves its secrets, and the grants others \
        hold on them, in place: a user created later with the same name owns them again. \
        --secrets delete removes its secrets and every grant on them."
    )]
    Rm {
        name: UserName,
        /// What becomes of NAME's secrets
        #[arg(long, value_enum, value_name = "keep|delete")]
        secrets: KeepOrDelete,
    },
}

/// `neuro admin user rm --secrets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeepOrDelete {
    Keep,
    Delete,
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCmd {
    /// Issue another token for USER; prints it alone on stdout
    Add { user: UserName },
    /// List USER's tokens and those of the jobs USER created (ids, never the tokens); JOB names
    /// the job of a job token
    Ls {
        user: UserName,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Revoke a token by its id (from `neuro admin token ls`)
    Revoke { id: String },
}

/// A failure of class `class` (a [`Failure`] of one item).
pub(crate) fn failure(class: ExitClass, message: impl Into<String>) -> anyhow::Error {
    Failure::new(class, message).into()
}

/// The exit code table of `--help`, applied to an error chain: the shared walk
/// ([`secrets_client::exit_class`]), and a final name that is not a regular file is bad input.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    secrets_client::exit_class(e.as_ref(), |c| match c.downcast_ref() {
        Some(private::WriteError::NotRegular { .. }) => Some(ExitClass::Invalid),
        _ => None,
    })
    .code()
}

/// What clap's refusal of the command line (or its help or version text) prints, and the exit
/// code.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseOutcome {
    pub code: u8,
    pub text: String,
    pub stderr: bool,
}

/// The outcome of clap's error `e` for the arguments `args` (without the program name).
///
/// A value its parser refused (a malformed user name, key, URI, job id, token or action) is
/// bad input, 65, reported like every other failure: one `ERROR:` line with the reason,
/// before any request. Anything else (an unknown command or flag, a missing or extra
/// argument, a choice outside the listed ones) is a usage error, 2, in clap's words, and help
/// and version text go to stdout with 0. Either way any argument that looks like a token is
/// shown as `****`: clap quotes a stray or misplaced argument, and `neuro login --url URL
/// TOKEN` (the `--token` forgotten) must not print the token.
pub fn parse_outcome(e: &clap::Error, args: &[String]) -> ParseOutcome {
    let mut text = e.render().to_string();
    for arg in args {
        for word in arg.split(['=', ' ']) {
            if word.starts_with("nst.") {
                text = text.replace(word, "****");
            }
        }
    }
    if e.kind() == clap::error::ErrorKind::ValueValidation {
        // clap's "error: REASON\n\nFor more information, try '--help'.\n", as one line.
        let reason = text.strip_prefix("error: ").unwrap_or(&text);
        let reason = reason
            .split("\n\nFor more information")
            .next()
            .unwrap_or(reason);
        let line = reason
            .split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        return ParseOutcome {
            code: ExitClass::Invalid.code(),
            text: format!("ERROR: {}\n", secrets_core::exit::escape_control(&line)),
            stderr: true,
        };
    }
    ParseOutcome {
        code: u8::try_from(e.exit_code()).unwrap_or(ExitClass::Usage.code()),
        text,
        stderr: e.use_stderr(),
    }
}

/// Prints [`parse_outcome`] of this process's arguments and returns its exit code.
pub fn usage_error(e: &clap::Error) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let o = parse_outcome(e, &args);
    if o.stderr {
        eprint!("{}", o.text);
    } else {
        print!("{}", o.text);
    }
    std::process::ExitCode::from(o.code)
}

/// One line for stderr, with a hint where one helps.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = format!("{e:#}");
    if let Some(ClientError::Status { status: 401, .. }) =
        e.chain().find_map(|c| c.downcast_ref::<ClientError>())
    {
        line = format!("not authenticated: {line} (hint: neuro login --url URL --token TOKEN)");
    }
    // One line; what is left of control characters (the service's text may hold any) is
    // escaped.
    secrets_core::exit::escape_control(&line.replace('\n', " ")).into_owned()
}

/// Connection settings after flags, environment and the config file.
struct Session {
    cfg: Config,
    url: String,
    token: Option<Token>,
    ca_file: Option<PathBuf>,
    /// Whether user and cluster in `cfg` describe `token`.
    cfg_identity: bool,
}

impl Session {
    fn new(cli: &Cli) -> anyhow::Result<Self> {
        let cfg = Config::load(&config::path()?)?;
        let env_token = match std::env::var_os("NEURO_TOKEN").filter(|v| !v.is_empty()) {
            Some(v) => Some(args::token(&v).map_err(|why| {
                failure(
                    ExitClass::Invalid,
                    format!("invalid NEURO_TOKEN: {why} (the value is not shown)"),
                )
            })?),
            None => None,
        };
        let url = cli
            .service
            .url()
            .or_else(|| cfg.url.clone())
            .ok_or_else(|| {
                failure(
                    ExitClass::Forbidden,
                    "not logged in: no service URL (hint: neuro login --url URL --token TOKEN, or set NEURO_URL and NEURO_TOKEN)",
                )
            })?;
        let cfg_identity = env_token.is_none() && cli.service.url().is_none();
        let token = env_token.or_else(|| cfg.token.clone());
        let ca_file = cli.service.ca_file().or_else(|| cfg.ca_file.clone());
        Ok(Self {
            cfg,
            url,
            token,
            ca_file,
            cfg_identity,
        })
    }

    /// The one client of this invocation.
    fn client(&self) -> anyhow::Result<Client> {
        if self.token.is_none() {
            return Err(failure(
                ExitClass::Forbidden,
                "not logged in: no token (hint: neuro login --url URL --token TOKEN, or set NEURO_TOKEN)",
            ));
        }
        let mut c = ClientConfig::new(self.url.clone(), self.token.clone());
        c.ca_file = self.ca_file.clone();
        Ok(Client::new(&c)?)
    }

    /// The caller's user and cluster, for expanding short forms.
    async fn me(&self, client: &Client) -> anyhow::Result<UriContext> {
        let (user, cluster) = match (&self.cfg.user, &self.cfg.cluster, self.cfg_identity) {
            (Some(u), Some(c), true) => (u.clone(), c.clone()),
            _ => {
                let w = client.whoami().await?;
                let user = w.user.ok_or_else(|| {
                    failure(
                        ExitClass::Forbidden,
                        "this token is the operator's; log in as a user for secret commands",
                    )
                })?;
                (user, w.cluster)
            }
        };
        Ok(UriContext {
            user: UserName::new(&user)?,
            cluster: ClusterName::new(&cluster)?,
        })
    }

    /// How secretfs and secret-inject reach the service.
    fn connection(&self) -> run::Connection {
        run::Connection {
            url: self.url.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

/// Reads `VALUE`: the bytes themselves, `@FILE` (with `~` expanded) or `@-` (stdin).
fn read_value(value: OsString) -> anyhow::Result<SecretBytes> {
    let bytes = value.into_vec();
    let Some(rest) = bytes.strip_prefix(b"@") else {
        return Ok(SecretBytes::new(bytes));
    };
    if rest == b"-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the value from standard input")?;
        return Ok(SecretBytes::new(buf));
    }
    let mut path = PathBuf::from(OsString::from_vec(rest.to_vec()));
    if let Ok(p) = path.strip_prefix("~") {
        let home = std::env::var_os("HOME").context("cannot expand '~': HOME is not set")?;
        path = PathBuf::from(home).join(p);
    }
    std::fs::read(&path).map(SecretBytes::new).map_err(|e| {
        failure(
            ExitClass::Invalid,
            format!("cannot read value file '{}': {e}", path.display()),
        )
    })
}

/// Writes `cmd`'s completion script for `shell` (the binary's name is the command's).
pub fn completion(
    shell: clap_complete::Shell,
    cmd: &mut clap::Command,
    out: &mut dyn std::io::Write,
) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, cmd, name, out);
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Resolves a `KEY` or URI argument to the full URI it names.
async fn target(s: &Session, client: &Client, r: &SecretRef) -> anyhow::Result<SecretUri> {
    if let (Some(cluster), Some(owner)) = (&r.cluster, &r.owner) {
        return Ok(SecretUri {
            cluster: cluster.clone(),
            owner: owner.clone(),
            key: r.key.clone(),
        });
    }
    Ok(r.resolve(&s.me(client).await?))
}

/// Runs the command; returns the exit code (`neuro run` passes on the job's). Every command
/// but `login` builds its session and its one client here.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Login { token } = &cli.command {
        return login(&cli, token.clone()).await.map(|()| 0);
    }
    if let Command::Completion { shell } = &cli.command {
        let mut out = std::io::stdout().lock();
        completion(
            *shell,
            &mut <Cli as clap::CommandFactory>::command(),
            &mut out,
        );
        out.flush()?;
        return Ok(0);
    }
    let s = Session::new(&cli)?;
    let client = s.client()?;
    match &cli.command {
        Command::Login { .. } | Command::Completion { .. } => unreachable!("handled above"),
        Command::Run(args) => run::run(&client, &s.connection(), args).await,
        Command::Secret(cmd) => secret(&s, &client, cmd).await.map(|()| 0),
        Command::Share { uri, user, action } => {
            let granted = client
                .grant(
                    user,
                    &[Grant {
                        uri: uri.as_str().to_owned(),
                        action: *action,
                    }],
                )
                .await?;
            for g in granted {
                println!("{} {} {user}", g.uri, g.action);
            }
            Ok(0)
        }
        Command::Acl(cmd) => acl(&s, &client, cmd).await.map(|()| 0),
        Command::Job(JobCmd::Manifest(args)) => manifest::manifest(&client, &s.connection(), args)
            .await
            .map(|()| 0),
        Command::Job(JobCmd::Rm { job_id }) => {
            client.delete_job(job_id).await?;
            println!("Job '{job_id}' deleted; its token is revoked");
            Ok(0)
        }
        Command::Admin(cmd) => admin(&client, cmd).await.map(|()| 0),
    }
}

async fn login(cli: &Cli, token: Token) -> anyhow::Result<()> {
    let path = config::path()?;
    let mut cfg = Config::load(&path)?;
    let url = cli
        .service
        .url()
        .ok_or_else(|| failure(ExitClass::Usage, "neuro login needs --url URL"))?;
    let ca_file = cli.service.ca_file();
    let mut c = ClientConfig::new(url.clone(), Some(token.clone()));
    c.ca_file = ca_file.clone();
    let client = Client::new(&c)?;
    let who = client.whoami().await?;
    cfg.url = Some(client.base_url().to_owned());
    cfg.token = Some(token);
    cfg.ca_file = ca_file.map(|p| std::path::absolute(&p).unwrap_or(p));
    cfg.user = who.user.clone();
    cfg.cluster = Some(who.cluster.clone());
    cfg.save(&path)?;
    let whom = match (&who.user, who.kind.as_str()) {
        (_, "operator") => "the operator".to_owned(),
        (Some(u), _) => u.clone(),
        (None, k) => k.to_owned(),
    };
    eprintln!(
        "Logged in to {} (cluster {}) as {whom}",
        client.base_url(),
        who.cluster
    );
    Ok(())
}

async fn secret(s: &Session, client: &Client, cmd: &SecretCmd) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Add { key, value } => {
            let value = read_value(value.clone())?;
            client
                .put_secret(key.owner.as_ref(), &key.key, value)
                .await?;
            Ok(())
        }
        SecretCmd::Ls {
            full_uri,
            quiet,
            output,
        } => {
            let list = client.list_secrets().await?;
            if output.output == Output::Json {
                return print_json(&list);
            }
            let me = if *full_uri {
                None
            } else {
                Some(s.me(client).await?.user)
            };
            let names: Vec<String> = list
                .iter()
                .map(|i| match &me {
                    Some(u) if i.owner == u.as_str() => i.key.clone(),
                    Some(_) => format!("secret:/{}/{}", i.owner, i.key),
                    None => i.uri.clone(),
                })
                .collect();
            let mut out = std::io::stdout().lock();
            if *quiet {
                for n in names {
                    writeln!(out, "{n}")?;
                }
            } else {
                let rows: Vec<Vec<String>> = names.into_iter().map(|n| vec![n]).collect();
                out.write_all(table::render(&["KEY"], &rows).as_bytes())?;
            }
            Ok(())
        }
        SecretCmd::Rm { key } => {
            let uri = target(s, client, key).await?;
            client.delete_secret(&uri.owner, &uri.key).await?;
            Ok(())
        }
        SecretCmd::Get { key, file } => {
            let uri = target(s, client, key).await?;
            let v = client.get_secret(&uri.owner, &uri.key).await?;
            match file {
                Some(path) => Ok(private::write_private(path, v.value.expose())?),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(v.value.expose())?;
                    out.flush()?;
                    Ok(())
                }
            }
        }
    }
}

async fn acl(s: &Session, client: &Client, cmd: &AclCmd) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Ls { shared, output } => {
            let me = s.me(client).await?.user;
            let rows: Vec<Vec<String>> = if *shared {
                let list = client.shared(&me).await?;
                if output.output == Output::Json {
                    return print_json(&list);
                }
                list.into_iter()
                    .map(|g| vec![g.uri, g.action.to_string(), g.user])
                    .collect()
            } else {
                let list = client.permissions(&me).await?;
                if output.output == Output::Json {
                    return print_json(&list);
                }
                list.into_iter()
                    .map(|g| vec![g.uri, g.action.to_string()])
                    .collect()
            };
            std::io::stdout()
                .lock()
                .write_all(table::plain(&rows).as_bytes())?;
            Ok(())
        }
        AclCmd::Revoke { uri, user } => {
            client.revoke(user, uri.as_str()).await?;
            Ok(())
        }
    }
}

async fn admin(client: &Client, cmd: &AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::User(AdminUserCmd::Add { name }) => {
            let issued = client.admin_create_user(name).await?;
            println!("{}", issued.token.expose());
        }
        AdminCmd::User(AdminUserCmd::Rm { name, secrets }) => {
            let r = client
                .admin_remove_user(name, *secrets == KeepOrDelete::Delete)
                .await?;
            println!(
                "removed user '{}': {} token(s) revoked, {} job(s) deleted, {} grant(s) removed, \
                 {} secret(s) deleted, {} secret(s) kept",
                r.user,
                r.tokens_revoked,
                r.jobs_deleted,
                r.grants_removed,
                r.secrets_deleted,
                r.secrets_kept
            );
        }
        AdminCmd::Token(AdminTokenCmd::Add { user }) => {
            let issued = client.admin_issue_token(user).await?;
            println!("{}", issued.token.expose());
        }
        AdminCmd::Token(AdminTokenCmd::Ls { user, output }) => {
            let list = client.admin_list_tokens(user).await?;
            if output.output == Output::Json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .into_iter()
                .map(|t| {
                    vec![
                        t.id,
                        t.created_at,
                        if t.revoked { "revoked" } else { "active" }.into(),
                        t.job_id.map_or_else(|| "-".into(), |j| j.to_string()),
                        t.expires_at.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["ID", "CREATED", "STATE", "JOB", "EXPIRES"], &rows)
            );
        }
        AdminCmd::Token(AdminTokenCmd::Revoke { id }) => {
            client.admin_revoke_token(id).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use secrets_client::ClientError;

    /// The service's text reaches the terminal as one line with its control characters
    /// escaped: a hostile server cannot recolour the terminal or forge a line.
    #[test]
    fn error_lines_escape_what_the_service_says() {
        let e = anyhow::Error::new(ClientError::Status {
            status: 403,
            message: "\x1b[31mdenied\nERROR: forged\r\x07".into(),
            missing: Vec::new(),
        });
        let line = super::error_line(&e);
        assert!(!line.contains('\x1b') && !line.contains('\r') && !line.contains('\n'));
        assert!(
            line.contains("\\x1b[31mdenied ERROR: forged\\r\\x07"),
            "{line}"
        );
    }
}
