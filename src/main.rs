//! The `kdet` binary: parses the command line (`cli`, a module per subcommand) and runs it.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // candle runs its CPU elementwise ops on a thread pool of its own that spin-waits between
    // ops, beside the rayon pool that runs kdet's convolutions, BatchNorm, pooling and
    // RoIAlign: two busy pools contend for the cores (measured on 2 cores: ResNet-18 SGD step
    // 249 → 205 ms, docs/benchmarks.md). One candle thread unless the user sets it.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    kdet::util::tune_allocator();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A run stopped by Ctrl-C / SIGTERM exits as the signal would have ended it, after
            // saying how to resume.
            if let Some(kdet::error::Error::Interrupted { signal, msg }) = e.downcast_ref() {
                eprintln!("{msg}");
                return ExitCode::from((128 + signal) as u8);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
