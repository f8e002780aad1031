//! The `idgate` command line: parses arguments, dispatches, and maps outcomes to exit codes.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idgate::cli;
use idgate::config::{Config, LogFormat};

/// jemalloc instead of the C library's allocator: musl's (the static image) costs half
/// again as much CPU per request, and glibc's keeps what a spike of connections freed.
/// Its options are built in from `.cargo/config.toml` (README: Memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Per-workload mTLS sidecar proxy with SPIFFE identities and segment rules.
#[derive(Parser)]
#[command(name = "idgate", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run(ConfigArgs),
    /// Check a config and every policy it names.
    Validate(ConfigArgs),
    /// Evaluate one request against a policy, offline.
    Check(cli::check::CheckArgs),
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print what a PEM certificate says (SPIFFE ID, validity, issuers).
    Inspect(cli::inspect::InspectArgs),
    /// Run a whole local mesh on loopback and show allowed and denied calls.
    Demo(cli::demo::DemoArgs),
    /// Add the idgate sidecar to Kubernetes YAML (pods annotated idgate.io/inject: "true").
    Inject(cli::inject::InjectArgs),
    /// Serve the Kubernetes mutating admission webhook (POST /mutate) over HTTPS.
    Webhook(cli::webhook::WebhookArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run policy test cases.
    Test(cli::policy_test::PolicyTestArgs),
    /// Write a least-privilege policy from decision logs.
    Learn(cli::learn::LearnArgs),
    /// Replay decision logs against two policies and list what changes.
    Diff(cli::diff::DiffArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a dev CA and SVIDs.
    Dev(cli::certs::CertsDevArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Config file (default: $IDGATE_CONFIG_TOML, then $IDGATE_CONFIG, then config/idgate.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match args.command {
        Command::Run(a) => run(&a),
        Command::Validate(a) => cli::validate::run(a.config.as_deref()),
        Command::Check(a) => cli::check::run(&a),
        Command::Policy(PolicyCommand::Test(a)) => cli::policy_test::run(&a),
        Command::Policy(PolicyCommand::Learn(a)) => cli::learn::run(&a),
        Command::Policy(PolicyCommand::Diff(a)) => cli::diff::run(&a),
        Command::Certs(CertsCommand::Dev(a)) => cli::certs::run(&a),
        Command::Inspect(a) => cli::inspect::run(&a),
        Command::Demo(a) => cli::demo::run(&a),
        Command::Inject(a) => cli::inject::run(&a),
        Command::Webhook(a) => cli::webhook::run(&a),
    };
    // Every command's output is flushed here; a failed write decides the exit code.
    ExitCode::from(cli::output::finish(code))
}

fn run(args: &ConfigArgs) -> u8 {
    let config = match Config::load_default(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };
    // Held until `run` returns: dropping it flushes what the writer thread still holds.
    let _flush_logs = init_tracing(config.log.format, &config.log.level);
    cli::block_on_current_thread(async move {
        let mut signals = match idgate::app::ShutdownSignals::install() {
            Ok(signals) => signals,
            Err(error) => {
                eprintln!("error: cannot watch SIGTERM/SIGINT: {error}");
                return 1;
            }
        };
        let app = match idgate::app::start(config).await {
            Ok(app) => app,
            Err(error) => {
                eprintln!("error: {error:#}");
                return 2;
            }
        };
        signals.recv().await;
        app.drain().await;
        0
    })
}

/// Diagnostic lines waiting for a stalled stderr at most. The writer's queue allocates
/// and touches a 32-byte slot per line up front: tracing-appender's default, 128,000,
/// kept 4 MiB of every idle sidecar resident (and hides a stall for minutes); 1,024 is
/// 32 KiB, and a burst of that many lines between two writes of the log thread is rare.
const DIAGNOSTIC_LINES: usize = 1_024;

/// Diagnostics go to stderr through a thread of their own, lossy: a stderr that stops
/// draining (a pipe whose reader stalls, a blocking container log driver) drops lines
/// instead of stopping the thread that serves requests, admin and signals. At most
/// [`DIAGNOSTIC_LINES`] wait; the dropped ones are counted (`idgate_log_lines_dropped_total`).
fn init_tracing(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (stderr, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(DIAGNOSTIC_LINES)
        .thread_name("idgate-log")
        .finish(std::io::stderr());
    idgate::telemetry::diagnostics::count_dropped(stderr.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}
