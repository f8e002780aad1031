//! Offline commands: validate, policy check and tests, dev certificates, certificate
//! inspection, and the demo (with the echo app it runs behind its sidecars).

pub mod certs;
pub mod check;
pub mod decision_log;
pub mod demo;
pub mod diff;
pub mod echo;
pub mod inject;
pub mod inspect;
pub mod learn;
pub mod policy_test;
pub mod validate;
pub mod webhook;
