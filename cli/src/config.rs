//! The user's connection settings: `neuro login` writes them (mode 0600, XDG config dir);
//! `NEURO_URL`, `NEURO_TOKEN` and `NEURO_CA_FILE` override them.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use secrets_core::Token;
use serde::{Deserialize, Serialize};

/// What `neuro login` stores.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    pub url: Option<String>,
    pub token: Option<Token>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Filled by login from `whoami`, so that short forms need no extra round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// `$XDG_CONFIG_HOME/neuro/config.json`, or `~/.config/neuro/config.json`.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("neuro/config.json"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config/neuro/config.json"))
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading config '{}'", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading config '{}'", path.display())),
        }
    }

    /// Writes atomically, mode 0600 in a 0700 directory (see [`crate::private`]).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().context("config path has no directory")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating '{}'", dir.display()))?;
        crate::private::write_private(path, &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}
