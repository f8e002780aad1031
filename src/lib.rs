//! idgate: a per-workload mTLS sidecar proxy with SPIFFE identities and segment rules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod devpki;
pub mod endpoint;
pub mod identity;
pub mod k8s;
pub mod per_worker;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod spiffe_id;
pub mod telemetry;
pub mod tls;
