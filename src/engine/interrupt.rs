//! A clean stop on Ctrl-C (SIGINT) and SIGTERM while a run trains: the first signal asks the
//! loop to finish its current step, write a checkpoint and stop with "interrupted at iteration
//! N; resume with --resume"; a second one exits at once (the last checkpoint on disk is whole:
//! every checkpoint write is atomic). Outside a training loop a signal ends the process as it
//! would without kdet (exit status 128 + the signal), since there is nothing to save.
//!
//! The signals are received on a thread of their own (signal-hook's iterator), so that thread
//! may print and exit; the loop only polls [`requested`] between steps.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use signal_hook::consts::{SIGINT, SIGTERM};

/// The first signal received while a loop is active (0: none).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// Whether a training loop is running (it will see [`REQUESTED`]).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The signal's name, for messages.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "Ctrl-C (SIGINT)",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Install the receiving thread, once per process.
fn install() -> std::io::Result<()> {
    static INSTALLED: OnceLock<std::io::Result<()>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        std::thread::Builder::new()
            .name("kdet-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    receive(sig);
                }
            })?;
        Ok(())
    });
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
}

/// What one received signal does.
fn receive(sig: i32) {
    if !ACTIVE.load(Ordering::SeqCst) {
        std::process::exit(128 + sig);
    }
    if REQUESTED
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        eprintln!("\n{} again: exiting now", signal_name(sig));
        std::process::exit(128 + sig);
    }
    eprintln!(
        "\n{} received: finishing the current step and writing a checkpoint \
         (press Ctrl-C again to exit at once)",
        signal_name(sig)
    );
}

/// The signal a loop was asked to stop by, if any.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// While alive, SIGINT and SIGTERM ask the loop to stop (see the module documentation).
pub struct Guard(());

impl Guard {
    pub fn new() -> crate::error::Result<Self> {
        install().map_err(|e| crate::error::Error::msg(format!("cannot catch Ctrl-C: {e}")))?;
        ACTIVE.store(true, Ordering::SeqCst);
        Ok(Guard(()))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        ACTIVE.store(false, Ordering::SeqCst);
    }
}

/// Send `sig` to this process, as a user's Ctrl-C or `kill` would (the fault hook
/// `KDET_FAULT=sigint:N` / `sigterm:N` of the reliability tests).
pub fn raise(sig: i32) {
    // SAFETY: sending a signal to ourselves has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), sig);
    }
}

/// The fault hooks: a real SIGINT or SIGTERM after the step the hook counts. It waits until the
/// receiving thread has seen the signal, so the stop lands at that step every time.
pub fn fault_hooks() {
    for (point, sig) in [("sigint", SIGINT), ("sigterm", SIGTERM)] {
        if crate::util::fault_point(point) {
            raise(sig);
            for _ in 0..1000 {
                if requested().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}
