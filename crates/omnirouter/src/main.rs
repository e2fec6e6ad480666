//! The `omnirouter` binary: a thin wrapper over [`omnirouter::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    omnirouter::cli::main()
}
