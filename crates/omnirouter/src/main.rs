//! The `omnirouter` binary: a thin wrapper over [`omnirouter::cli`].

use std::process::ExitCode;

/// mimalloc: fewer cycles and less cross-thread contention than glibc malloc for the daemon's
/// many small, short-lived allocations (measured in the ingest benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    omnirouter::cli::main()
}
