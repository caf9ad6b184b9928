//! End-to-end tests over the real `secretd` and `neuro` binaries on loopback.

// A test fails by panicking; unwrap is its assertion. Case tables are wide tuples on purpose.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

mod harness;

mod audit_fail_closed;
mod authz;
mod bad_input;
mod console;
mod crash;
mod crate_deps;
mod etcd_cluster;
mod etcd_faults;
mod etcd_tls;
mod hardening;
mod inject;
mod inject_hardening;
mod inject_tls;
mod jobs;
mod limits_root;
mod ops;
mod pod_podman;
mod run_root;
mod secretfs_paths_root;
mod secretfs_root_fuse;
mod tls;
mod walkthrough;
