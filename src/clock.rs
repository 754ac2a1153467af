//! A cheap monotonic clock for the request path.
//!
//! The driver's one timer ages a token when the core says ([`Core::poll_timeout`]; a paused
//! test clock drives it too), but a timer only runs when its runtime is driven: a runtime that
//! was dropped, left idle (a `current_thread` runtime between two `block_on`s) or kept busy
//! runs it late or never. So every request also compares this clock with the token's
//! deadlines, and an expired token is never sent, whatever became of the timer. It is the one
//! clock the request path reads.
//!
//! [`Core::poll_timeout`]: crate::token::Core::poll_timeout
//!
//! Hand-written because std has no coarse clock: `Instant::now()` costs about 40 ns on the
//! project's machine (a full `clock_gettime` through the vDSO), `CLOCK_MONOTONIC_COARSE` about
//! 9 ns, at a resolution of a few milliseconds, which the send margin (at least 100 ms) covers.
//! Elsewhere than Linux it falls back to `Instant`.

use std::time::Duration;

/// A reading of the coarse monotonic clock, as time since an arbitrary origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Coarse(Duration);

impl Coarse {
    /// A reading no clock reaches: the deadline of what never expires.
    pub(crate) const NEVER: Coarse = Coarse(Duration::MAX);

    /// The clock now.
    #[inline]
    pub(crate) fn now() -> Coarse {
        Coarse(since_origin())
    }

    /// This reading in nanoseconds, for an atomic (saturating).
    pub(crate) fn nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// This reading plus `duration`, saturating.
    pub(crate) fn after(self, duration: Duration) -> Coarse {
        Coarse(self.0.saturating_add(duration))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn since_origin() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    // Monotonic time is never negative; `try_from` only guards the types.
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
fn since_origin() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_with_real_time() {
        // At least the time slept, less the clock's resolution (a few ms); no upper bound, as
        // a busy machine may wake this thread late.
        let before = Coarse::now();
        std::thread::sleep(Duration::from_millis(30));
        let after = Coarse::now();
        assert!(after > before);
        assert!(
            after >= before.after(Duration::from_millis(20)),
            "{before:?} {after:?}"
        );
    }
}
