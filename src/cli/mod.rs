//! Offline commands: policy check, dev certificates, certificate inspection, the demo.

pub mod certs;
pub mod check;
pub mod inspect;
pub mod policy_test;
