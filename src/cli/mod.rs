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
pub mod output;
pub mod policy_test;
pub mod validate;
pub mod webhook;

use std::future::Future;

use tokio::runtime::Builder;

/// Runs `work` to completion on a multi-threaded runtime and returns its exit code
/// (1 when the runtime itself cannot start).
pub fn block_on(work: impl Future<Output = u8>) -> u8 {
    block_on_with(Builder::new_multi_thread(), work)
}

/// Runs `work` on a current-thread runtime: every task on the calling thread, so waking a
/// task never wakes another thread (`idgate run` adds its own worker threads beside it).
pub fn block_on_current_thread(work: impl Future<Output = u8>) -> u8 {
    block_on_with(Builder::new_current_thread(), work)
}

fn block_on_with(mut builder: Builder, work: impl Future<Output = u8>) -> u8 {
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(work),
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            1
        }
    }
}
