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

/// Runs `work` to completion on a multi-threaded runtime and returns its exit code
/// (1 when the runtime itself cannot start).
pub fn block_on(work: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            1
        }
    }
}
