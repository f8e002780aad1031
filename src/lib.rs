//! idgate: a per-workload mTLS sidecar proxy with SPIFFE identities and segment rules.
#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod policy;
pub mod spiffe_id;
pub mod tls;
