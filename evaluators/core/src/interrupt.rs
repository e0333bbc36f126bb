//! A process-wide stop request (SIGINT/SIGTERM): set from a signal handler, polled by
//! evaluators that wait on something long (an external command) and by the search loop between
//! candidates. Setting it is async-signal-safe (one atomic store).

use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Ask everything running to stop because of `signal` (the first request wins). Safe to call
/// from a signal handler.
pub fn request(signal: i32) {
    let _ = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// The signal a stop was requested with, if any.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Forget a request (for tests and for a process that handled it and goes on).
pub fn clear() {
    SIGNAL.store(0, Ordering::SeqCst);
}
