//! The attempts of one login: when to start one, a second beside a slow one, and when to
//! give up.

use super::*;

/// The attempts of one login: when to start one, when to start a second beside a slow one,
/// when to give up.
///
/// An attempt is never cut while the login's deadline has not passed: a slow but healthy login
/// endpoint answers in time. An attempt that has not answered after a third of the login
/// timeout gets a second beside it (a hedge: at most two in flight); the first good answer
/// wins. A transient failure (5xx, 429, no connection) is tried again after a jittered back-off
/// or the `Retry-After` the endpoint asked for; any other failure ends the login at once.
#[derive(Debug)]
pub(crate) struct Attempts {
    timeout: Duration,
    deadline: Instant,
    hedge_after: Duration,
    /// Start times of the attempts in flight, by id.
    flying: Vec<(u32, Instant)>,
    started: u32,
    /// Failures in a row, those of the failure this login follows included.
    failures: u32,
    next_at: Instant,
    last: Option<Error>,
    /// An answer that needs a fix: the login ends with it.
    fatal: Option<Failure>,
    /// The longest an attempt waited, answered or not.
    slowest: Duration,
}

/// What the driver of a login does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Start attempt `id`.
    Start(u32),
    /// Wait for an attempt's answer, or until this time, then ask again.
    Wait(Instant),
    /// The login failed.
    Fail(Failure),
}

impl Attempts {
    /// The attempts of a login starting at `now`, after `after` if it follows a failure.
    pub(crate) fn new(timings: &Timings, now: Instant, after: Option<Failure>) -> Attempts {
        let (failures, next_at, last) = match after {
            Some(failure) => (
                failure.attempts,
                failure.retry_at.max(now),
                Some(failure.error),
            ),
            None => (0, now, None),
        };
        Attempts {
            timeout: timings.login_timeout,
            deadline: now + timings.login_timeout,
            hedge_after: timings.login_timeout / 3,
            flying: Vec::with_capacity(2),
            started: 0,
            failures,
            next_at,
            last,
            fatal: None,
            slowest: Duration::ZERO,
        }
    }

    /// What to do at `now`.
    pub(crate) fn step(&mut self, now: Instant) -> Step {
        if let Some(failure) = self.fatal.take() {
            return Step::Fail(failure);
        }
        if now >= self.deadline || (self.flying.is_empty() && self.next_at >= self.deadline) {
            return Step::Fail(self.out_of_time(now));
        }
        let hedge_at = match self.flying.as_slice() {
            [] => now,
            [(_, first)] => *first + self.hedge_after,
            _ => return Step::Wait(self.deadline),
        };
        let start_at = hedge_at.max(self.next_at);
        if now >= start_at {
            self.started += 1;
            self.flying.push((self.started, now));
            return Step::Start(self.started);
        }
        Step::Wait(start_at.min(self.deadline))
    }

    /// The failure of a login out of time at `now`.
    fn out_of_time(&mut self, now: Instant) -> Failure {
        for (_, started) in &self.flying {
            self.slowest = self.slowest.max(now.saturating_duration_since(*started));
        }
        let error = match (&self.last, self.flying.is_empty()) {
            // Waiting out a back-off or `Retry-After`: the failure that asked for it.
            (Some(last), true) => last.clone(),
            _ => Error::new(crate::error::Kind::Timeout {
                after: self.timeout,
                attempts: self.started,
                slowest: self.slowest,
            }),
        };
        Failure {
            error,
            retry_at: self.next_at.max(now),
            attempts: self.failures.max(1),
        }
    }

    /// Attempt `id` failed at `now` with `error`; `jitter` is a draw in `[0, 1)`.
    pub(crate) fn failed(&mut self, id: u32, now: Instant, error: Error, jitter: f64) {
        if let Some(i) = self.flying.iter().position(|(flying, _)| *flying == id) {
            let (_, started) = self.flying.swap_remove(i);
            self.slowest = self.slowest.max(now.saturating_duration_since(started));
        }
        self.failures = self.failures.saturating_add(1);
        let wait =
            backoff(&error, self.failures, jitter).max(error.retry_after().unwrap_or_default());
        self.next_at = self.next_at.max(now + wait);
        if !error.is_transient() {
            self.fatal = Some(Failure {
                error: error.clone(),
                retry_at: now + wait,
                attempts: self.failures,
            });
        }
        self.last = Some(error);
    }
}
