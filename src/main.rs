use std::process::ExitCode;

use clap::Parser;
use jetstream::cli::{self, Cli};
use jetstream::telemetry::{errors, logs};

/// mimalloc, not glibc's malloc: glibc gives each thread that allocates (the runtime's workers,
/// the blocking pool's SQLite readers, the writer) an arena of its own, up to eight per core, and
/// keeps what is freed in each; RSS grew to ~1.5 GB on a 10M-event store (bench/README.md, "Cost curve").
/// The `system-alloc` feature keeps the system's allocator, for heap profilers that hook `malloc`
/// (heaptrack: bench/README.md, "Memory").
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    // Before the runtime starts, so that its threads report panics too; kept until exit, which
    // flushes reports still queued.
    let _sentry = match errors::init(cli.telemetry.sentry_dsn.as_deref(), &cli.telemetry.sentry_environment) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The demo's simulator posts ten times a second: its access lines would bury the demo's own
    // output, so the demo logs requests only at warn (JETSTREAM_LOG still decides when set).
    let default_filter = match cli.command {
        cli::Command::Demo(_) => "info,jetstream::access=warn",
        _ => "info",
    };
    let log_writer =
        logs::init(cli.telemetry.log_format, default_filter, _sentry.is_some().then(errors::tracing_layer));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            drop(log_writer);
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(cli::run(cli));
    // What the runtime's tasks log as they stop, then the lines still queued, before the last word.
    drop(runtime);
    drop(log_writer);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::describe(&e));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
