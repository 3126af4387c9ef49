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

/// SQLite's own allocations (page caches, statements, b-tree cursors) go to mimalloc too. On
/// glibc's malloc they spread over its per-thread arenas, since every runtime and blocking-pool
/// thread may read or merge, and the arenas kept what was freed: 425-485 MB of RSS on a 10M-event
/// store for page caches bounded at 192 MiB (bench/README.md, "Memory").
#[cfg(not(feature = "system-alloc"))]
mod sqlite_alloc {
    use std::ffi::{c_int, c_void};

    use libmimalloc_sys as mi;
    use rusqlite::ffi;

    fn size(n: c_int) -> usize {
        usize::try_from(n).unwrap_or(0)
    }

    unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
        unsafe { mi::mi_malloc(size(n)) }
    }

    unsafe extern "C" fn x_free(p: *mut c_void) {
        unsafe { mi::mi_free(p) }
    }

    unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
        unsafe { mi::mi_realloc(p, size(n)) }
    }

    unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
        c_int::try_from(unsafe { mi::mi_usable_size(p) }).unwrap_or(c_int::MAX)
    }

    unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
        c_int::try_from(unsafe { mi::mi_good_size(size(n)) }).unwrap_or(n)
    }

    unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
        ffi::SQLITE_OK
    }

    unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

    /// Before SQLite initialises (the first connection opened): later, SQLite refuses it.
    pub fn install() -> bool {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SQLite copies the methods.
        unsafe {
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const ffi::sqlite3_mem_methods)
                == ffi::SQLITE_OK
        }
    }
}

fn main() -> ExitCode {
    // No transparent huge pages for this process: mimalloc asks for them on its regions
    // (`madvise`), and a 2 MiB page stays resident, whole, while anything in it is live. Under an
    // ingest backlog 561 MB of the server's 1.43 GB RSS were huge pages; without them, 1.2 GB
    // at most (bench/README.md, "Memory under overload"). Best effort: an old kernel lacks it.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    #[cfg(not(feature = "system-alloc"))]
    if !sqlite_alloc::install() {
        eprintln!("warning: SQLite keeps its own allocator (it was initialised before main)");
    }
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
