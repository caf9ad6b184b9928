//! The client side of the secrets API, shared by `neuro`, `secretfs` and `secret-inject`: the
//! HTTP client (`Client`, with the feature `reqwest`), what can go wrong with a request
//! (`ClientError`) and its exit class, the connection options and the token reader (`conn`),
//! and `Failure` with `exit_class`, the one walk from an error chain to its exit class.
//!
//! This is where the I/O of talking to the service lives; `secrets-core` holds the types.

#[cfg(feature = "reqwest")]
pub mod client;
pub mod conn;
pub mod error;
pub mod failure;

#[cfg(feature = "reqwest")]
pub use client::Client;
pub use conn::{ClientConfig, ConnArgs, GroupMayRead, ServiceArgs, TokenError, read_token};
pub use error::{ClientError, answer, not_http, tls_failure};
pub use failure::{Failure, exit_class};
