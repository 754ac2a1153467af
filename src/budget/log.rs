//! The sliding log one API budget is kept in: in a process, in a
//! [`FileStore`](crate::store::FileStore)'s file (which reads and writes it under its lock),
//! and, the same rule in Lua, in Redis. Below the store, which it knows nothing of.

use std::{collections::VecDeque, time::Duration};

/// How long a 429 pauses the budget when it says nothing, and the longest it may.
pub(crate) const PAUSE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// A sliding log: when the last window's units were taken, and until when a 429 paused it, in
/// microseconds on one clock: since the [`Gate`]'s creation in a process, since the Unix epoch
/// in a [`FileStore`](crate::store::FileStore)'s file. One rule for both; Redis's script keeps
/// the same in Lua.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) sent: VecDeque<u64>,
    pub(crate) paused_until: Option<u64>,
}

impl Log {
    /// Takes one unit at `now`, or says when one may be had: when the pause ends, or when the
    /// window's oldest unit ages out.
    pub(crate) fn take(&mut self, now: u64, limit: u32, window: u64) -> Result<(), u64> {
        self.bound(now, window);
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(until);
            }
            self.paused_until = None;
        }
        while self
            .sent
            .front()
            .is_some_and(|first| first.saturating_add(window) <= now)
        {
            self.sent.pop_front();
        }
        match self.sent.front() {
            Some(first) if self.sent.len() >= limit as usize => Err(first.saturating_add(window)),
            _ => {
                self.sent.push_back(now);
                Ok(())
            }
        }
    }

    /// Keeps what a log read from a file can hold to what this clock could have written: a
    /// pause ending more than 5 minutes from now (the longest a 429 pauses) is dropped, and so
    /// is a unit dated more than one window ahead; a unit dated ahead by less is dated now. Such
    /// dates come from a wall clock stepped back (or a damaged file): obeyed, a clock 10 minutes
    /// back would block the account for 10 minutes. Dating the near ones now keeps them counted
    /// (they were sent in the last window, as the host's time went) for at most one window.
    fn bound(&mut self, now: u64, window: u64) {
        if self
            .paused_until
            .is_some_and(|until| until > now.saturating_add(micros(PAUSE.1)))
        {
            self.paused_until = None;
        }
        if self.sent.back().is_some_and(|last| *last > now) {
            self.sent.retain(|at| *at <= now.saturating_add(window));
            for at in &mut self.sent {
                *at = (*at).min(now);
            }
        }
    }

    /// Records a unit the store gave, keeping only the last window's (for an outage to come).
    pub(crate) fn record(&mut self, now: u64, limit: u32, window: u64) {
        while self.sent.front().is_some_and(|first| {
            first.saturating_add(window) <= now || self.sent.len() >= limit as usize
        }) {
            self.sent.pop_front();
        }
        // In order of dates: a unit asked for before others were taken from the log.
        let at = self.sent.partition_point(|unit| *unit <= now);
        self.sent.insert(at, now);
    }

    /// Dates a unit dated `dated` at `redated` instead, earlier: it ages out sooner. The log
    /// stays in order of dates.
    /// Whether it was in the log (not aged out already).
    pub(crate) fn redate(&mut self, dated: u64, redated: u64) -> bool {
        if redated >= dated || !self.give_back(dated) {
            return false;
        }
        let to = self.sent.partition_point(|unit| *unit <= redated);
        self.sent.insert(to, redated);
        true
    }

    /// Takes out a unit dated `dated`, unused: whether it was there.
    pub(crate) fn give_back(&mut self, dated: u64) -> bool {
        let at = self.sent.partition_point(|unit| *unit < dated);
        if self.sent.get(at) != Some(&dated) {
            return false;
        }
        self.sent.remove(at);
        true
    }

    /// Pauses the log until `until`, unless a longer pause is set.
    pub(crate) fn pause(&mut self, until: u64) {
        self.paused_until = Some(self.paused_until.map_or(until, |paused| paused.max(until)));
    }
}

/// A duration in whole microseconds, as a [`Log`] counts.
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_never_lets_more_than_the_limit_into_a_window() {
        let (limit, window) = (3, micros(Duration::from_secs(2)));
        let mut log = Log::default();
        let at = |ms: u64| ms * 1000;
        for ms in [0, 10, 20] {
            assert_eq!(log.take(at(ms), limit, window), Ok(()));
        }
        assert_eq!(
            log.take(at(30), limit, window),
            Err(at(2000)),
            "the oldest ages out"
        );
        assert_eq!(log.take(at(2000), limit, window), Ok(()));
        assert_eq!(log.take(at(2001), limit, window), Err(at(2010)));
        log.pause(at(5000));
        assert_eq!(log.take(at(4000), limit, window), Err(at(5000)), "paused");
        assert_eq!(log.take(at(5000), limit, window), Ok(()));
    }

    /// A unit whose request was answered is dated earlier, by what the default margin kept
    /// beyond the time that took: it ages out sooner, and the log stays in order.
    #[test]
    fn a_unit_dated_earlier_ages_out_sooner() {
        let (limit, window) = (3, micros(Duration::from_millis(2250)));
        let mut log = Log::default();
        let at = |ms: u64| ms * 1000;
        for ms in [1000, 1010, 1020] {
            assert_eq!(log.take(at(ms), limit, window), Ok(()));
        }
        assert_eq!(log.take(at(1030), limit, window), Err(at(3250)));
        assert!(
            log.redate(at(1010), at(800)),
            "answered within 50 ms, not 250"
        );
        assert_eq!(Vec::from(log.sent.clone()), [at(800), at(1000), at(1020)]);
        assert!(!log.redate(at(1010), at(700)), "no longer dated so");
        assert!(!log.redate(at(1000), at(1000)), "never later");
        assert_eq!(log.take(at(3049), limit, window), Err(at(3050)));
        assert_eq!(log.take(at(3050), limit, window), Ok(()));
    }

    /// A log read from a file after the wall clock stepped back, or damaged: what this clock
    /// could not have written does not block the account.
    #[test]
    fn a_log_from_a_clock_stepped_back_blocks_at_most_one_window() {
        let (limit, window) = (3, micros(Duration::from_secs(2)));
        let (minute, now) = (
            micros(Duration::from_secs(60)),
            micros(Duration::from_secs(7200)),
        );
        // A pause far ahead (an hour, or the end of time): dropped; 5 minutes ahead: kept.
        for until in [now + 60 * minute, u64::MAX] {
            let mut log = Log {
                paused_until: Some(until),
                ..Log::default()
            };
            assert_eq!(log.take(now, limit, window), Ok(()), "{until}");
        }
        let mut log = Log {
            paused_until: Some(now + 5 * minute),
            ..Log::default()
        };
        assert_eq!(log.take(now, limit, window), Err(now + 5 * minute));
        // A full window dated 10 minutes ahead: dropped.
        let mut log = Log {
            sent: [now + 10 * minute; 3].into(),
            ..Log::default()
        };
        assert_eq!(log.take(now, limit, window), Ok(()));
        // Dated ahead by less than a window: kept, dated now, aged out a window from now.
        let mut log = Log {
            sent: [now, now + 1000, now + 2000].into(),
            ..Log::default()
        };
        assert_eq!(log.take(now, limit, window), Err(now + window));
        assert_eq!(log.take(now + window, limit, window), Ok(()));
    }
}
