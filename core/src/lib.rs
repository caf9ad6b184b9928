//! Shared vocabulary of the secrets system: validated names, secret URIs, job mapping specs,
//! the JSON shapes of the HTTP API and the client that speaks it.
//!
//! This crate holds no process-wide state and does no I/O beyond its HTTP client and the
//! token reader of `conn`.

pub mod api;
pub mod client;
pub mod conn;
pub mod exit;
pub mod handoff;
pub mod manifest;
pub mod mapping;
pub mod names;
pub mod secret;
pub mod uri;

pub use conn::{ConnArgs, GroupMayRead, TokenError};
pub use exit::ExitClass;
pub use mapping::{EnvMapping, EnvSpec, MappingError, VolumeMapping, secretfs_file_name};
pub use names::{ClusterName, EnvName, JobId, NameError, SecretKey, UserName};
pub use secret::{SecretBytes, Token};
pub use uri::{Action, ResourceUri, SecretRef, SecretUri, UriContext, UriError};

/// The largest secret value the service accepts, in bytes (1 MiB).
pub const MAX_VALUE_LEN: usize = 1024 * 1024;
