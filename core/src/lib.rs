//! Shared vocabulary of the secrets system: validated names, secret URIs, job mapping specs,
//! exit classes and the JSON shapes of the HTTP API.
//!
//! This crate does no I/O and holds no process-wide state: the client that speaks the API, and
//! the token reader, are `secrets-client`'s; the Pod manifest is `secrets-manifest`'s.

pub mod api;
pub mod exit;
pub mod handoff;
pub mod mapping;
pub mod names;
pub mod secret;
pub mod uri;

pub use exit::ExitClass;
pub use mapping::{EnvMapping, EnvSpec, MappingError, VolumeMapping, secretfs_file_name};
pub use names::{ClusterName, EnvName, JobId, NameError, SecretKey, UserName};
pub use secret::{SecretBytes, Token};
pub use uri::{Action, ResourceUri, SecretRef, SecretUri, UriContext, UriError};

/// The largest secret value the service accepts, in bytes (1 MiB).
pub const MAX_VALUE_LEN: usize = 1024 * 1024;
