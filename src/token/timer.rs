//! The core's deadlines, as quinn-proto's `Connection::poll_timeout` has them: when the driver's
//! one timer next needs to run, and what came due when it does. The current token's renewal
//! window, a failed renewal's back-off, its expiry, and the deadline of the check that settles
//! a bare 401.
//!
//! The waits inside one login are the core's decisions too, and the login's own task sleeps
//! until the instant decided, as it belongs to that login: its attempts' back-off
//! ([`Attempts::step`]), its look in the store while another process logs in
//! ([`Timings::store_poll`]); and so are a resync's after a store outage ([`resync_at`]).

use super::*;

/// What came due at one of the core's deadlines, for the token of a generation: what the
/// driver's timer does to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Its renewal window opened: the first request to see it starts the renewal.
    Renewal(u64),
    /// A failed renewal's back-off ended: the next request to see it renews again.
    Retry(u64),
    /// It may no longer be sent.
    Expired(u64),
    /// The check of it did not answer in time: it cannot tell.
    Check(u64),
}

impl Due {
    pub(crate) fn generation(self) -> u64 {
        match self {
            Due::Renewal(generation)
            | Due::Retry(generation)
            | Due::Expired(generation)
            | Due::Check(generation) => generation,
        }
    }
}

/// Which of the current token's deadlines are still to come.
#[derive(Clone, Debug, Default)]
pub(super) struct Deadlines {
    renewal_told: bool,
    expiry_told: bool,
    /// The end of a failed (or refused) renewal's back-off, until told.
    pub(super) retry_at: Option<Instant>,
}

/// The last check of a token that settles a bare 401.
#[derive(Clone, Copy, Debug)]
pub(super) struct Check {
    generation: u64,
    started: Instant,
    /// Its deadline while it has no answer; `None` once it answered or timed out.
    until: Option<Instant>,
}

/// The shortest time between two checks of one token.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl Core {
    /// When the driver's timer next needs to run: the current token's renewal window, the end
    /// of a failed renewal's back-off, its expiry, or a check's deadline, whichever comes
    /// first. `None`: nothing is timed (no token and no check, or an API key).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let check = self.check.and_then(|check| check.until);
        let Some(current) = self.current.as_ref().filter(|_| !self.api_key) else {
            return check;
        };
        let timed = &current.deadlines;
        let renewal = (!timed.renewal_told).then_some(current.renew_at);
        let expiry = (!timed.expiry_told).then_some(current.send_by);
        [renewal, timed.retry_at, expiry, check]
            .into_iter()
            .flatten()
            .min()
    }

    /// The timer ran at `now`: what came due, one at a time (ask again until `None`).
    pub(crate) fn timeout(&mut self, now: Instant) -> Option<Due> {
        if let Some(check) = self.check.as_mut() {
            if check.until.is_some_and(|until| now >= until) {
                check.until = None;
                return Some(Due::Check(check.generation));
            }
        }
        if self.api_key {
            return None;
        }
        let current = self.current.as_mut()?;
        let (generation, timed) = (current.generation, &mut current.deadlines);
        if !timed.expiry_told && now >= current.send_by {
            *timed = Deadlines {
                renewal_told: true,
                expiry_told: true,
                retry_at: None,
            };
            return Some(Due::Expired(generation));
        }
        if !timed.renewal_told && now >= current.renew_at {
            timed.renewal_told = true;
            return Some(Due::Renewal(generation));
        }
        if timed.retry_at.is_some_and(|at| now >= at) {
            timed.retry_at = None;
            return Some(Due::Retry(generation));
        }
        None
    }

    /// The check of token `generation` that settles a bare 401 started at `now`: it answers
    /// within the login timeout (what a caller waits for a token), or it cannot tell.
    pub(crate) fn check_started(&mut self, generation: u64, now: Instant) {
        self.check = Some(Check {
            generation,
            started: now,
            until: Some(now + self.timings.login_timeout),
        });
    }

    /// The check of token `generation` answered.
    pub(crate) fn check_ended(&mut self, generation: u64) {
        if let Some(check) = self.check.as_mut().filter(|c| c.generation == generation) {
            check.until = None;
        }
    }

    /// Whether a bare 401 to token `generation` at `now` that the core wants settled
    /// ([`Unauthorized::Check`]) starts a check ([`Core::check_started`]); if not, it takes
    /// the answer of the check of that token in flight, or of the last one when that started
    /// less than a second ago: at most one check a second per token.
    pub(crate) fn check_due(&self, generation: u64, now: Instant) -> bool {
        !self.check.is_some_and(|check| {
            check.generation == generation
                && (check.until.is_some() || now < check.started + CHECK_EVERY)
        })
    }

    /// A renewal of the current token failed, or may not start before `at`: it is due again
    /// then.
    pub(super) fn renew_again_at(&mut self, at: Instant) {
        if let Some(current) = self.current.as_mut() {
            if !current.deadlines.expiry_told {
                current.deadlines.retry_at = Some(at);
            }
        }
    }
}
