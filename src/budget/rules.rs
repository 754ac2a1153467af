//! The budget's rules: who gets a unit when, as one pure state under the gate's lock (no I/O, no
//! clock: every time is given, in microseconds on the gate's clock). The gate carries out what
//! they decide: it asks the store when told to, waits until when told to, wakes whom they say.
//! Checked against a reference model in `checks::budget_model`.

use super::log::{micros, Log};
use std::time::Duration;

/// After a store operation failed, how long the process keeps its own budget before one
/// request asks the store again (a probe): a frozen store costs one request the store's
/// deadline a second, not every request in a queue.
pub(crate) const STORE_PROBE: Duration = Duration::from_secs(1);

/// Why a unit is taken: a login's wait is not bounded by `max_wait`, and it goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Request,
    Login,
}

/// What the rules decide for one try at a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// The unit is taken, dated at the try.
    Unit,
    /// No unit before this time: the window's oldest unit ages out, or the pause ends.
    Until(u64),
    /// A login waits for a unit: a request waits until it is served ([`Rules::login_served`]).
    AfterLogin,
}

/// The budget's state: its sliding log, the logins waiting, the store's health, and how many
/// times a unit was not to be had.
#[derive(Debug)]
pub(crate) struct Rules {
    limit: u32,
    per: u64,
    /// `per` and the given or default margin.
    window: u64,
    /// Whether a unit's answer dates it earlier (no margin given, and the units are the
    /// process's own, not a store's).
    measured: bool,
    /// Whether the budget is shared through a store.
    shared: bool,
    log: Log,
    logins_waiting: usize,
    /// While the store is down (its last operation failed), when a try may ask it again; 0
    /// while it answers. A failure sets it a [`STORE_PROBE`] past a time, so never to 0.
    probe_at: u64,
    /// How many tries found no unit (the window full, or a pause): a request during which
    /// this moved waited for its turn, not only for a store's round trip.
    full: u64,
}

impl Rules {
    pub(crate) fn new(
        limit: u32,
        per: Duration,
        window: Duration,
        measured: bool,
        shared: bool,
    ) -> Self {
        Rules {
            limit,
            per: micros(per),
            window: micros(window),
            measured: measured && !shared,
            shared,
            log: Log::default(),
            logins_waiting: 0,
            probe_at: 0,
            full: 0,
        }
    }

    /// One try at a unit at `now`: the turn, or `None` to ask the store, then tell the rules
    /// its answer ([`stored`](Self::stored)) or its failure ([`store_failed`](Self::store_failed)).
    /// A request waits while a login does; a shared budget asks the store unless it is down and
    /// not yet due a probe, or paused here; else the process's own log.
    pub(crate) fn take(&mut self, now: u64, purpose: Purpose) -> Option<Turn> {
        if purpose == Purpose::Request && self.logins_waiting > 0 {
            return Some(Turn::AfterLogin);
        }
        if self.shared && now >= self.probe_at {
            // Paused here: the store (which may not have the pause yet) is not asked for a unit
            // that could not be used.
            if let Some(until) = self.log.paused_until.filter(|until| *until > now) {
                self.full += 1;
                return Some(Turn::Until(until));
            }
            return None;
        }
        Some(self.own(now))
    }

    /// A unit now without waiting, for the warm path: only from the process's own log, with no
    /// login waiting (the caller holds the queue's turn: no request is queued).
    pub(crate) fn take_now(&mut self, now: u64) -> bool {
        !self.shared && self.logins_waiting == 0 && self.own(now) == Turn::Unit
    }

    /// The store answered a try made at `asked`, by `now`: a unit (`None`), or how long until
    /// one. A unit the store gave is recorded in the process's log too (for an outage to come),
    /// and is not used before a pause this process saw ends: the pause may not have reached
    /// the store before it handed the unit out.
    pub(crate) fn stored(&mut self, asked: u64, now: u64, wait: Option<Duration>) -> Turn {
        let turn = match wait {
            Some(wait) => Turn::Until(asked.saturating_add(micros(wait))),
            None => {
                self.log.record(asked, self.limit, self.window);
                match self.log.paused_until.filter(|until| *until > now) {
                    Some(until) => Turn::Until(until),
                    None => Turn::Unit,
                }
            }
        };
        if turn != Turn::Unit {
            self.full += 1;
        }
        turn
    }

    /// The store answered an operation: whether it had been down (it is back).
    pub(crate) fn store_answered(&mut self) -> bool {
        std::mem::replace(&mut self.probe_at, 0) != 0
    }

    /// A store operation failed at `now` (or took too long): the process keeps its own log
    /// until a probe a [`STORE_PROBE`] later. Whether this is the outage's first failure (to
    /// warn once).
    pub(crate) fn store_failed(&mut self, now: u64) -> bool {
        let probe_at = now.saturating_add(micros(STORE_PROBE));
        std::mem::replace(&mut self.probe_at, probe_at) == 0
    }

    /// A try at `asked` from the process's own log: after the store failed, or for a store
    /// that keeps no budget.
    pub(crate) fn own(&mut self, asked: u64) -> Turn {
        match self.log.take(asked, self.limit, self.window) {
            Ok(()) => Turn::Unit,
            Err(until) => {
                self.full += 1;
                Turn::Until(until)
            }
        }
    }

    /// A login waits for a unit: requests wait for it.
    pub(crate) fn login_waits(&mut self) {
        self.logins_waiting += 1;
    }

    /// A login that waited has its unit, or gave up: the requests go on when none waits.
    pub(crate) fn login_served(&mut self) {
        self.logins_waiting = self.logins_waiting.saturating_sub(1);
    }

    /// A 429 at `now`: no unit leaves this process before `until`, from its log or the store.
    pub(crate) fn pause(&mut self, until: u64) {
        self.log.pause(until);
    }

    /// A unit dated `dated` was never used: it goes back to a budget kept in the process (a
    /// store's unit stays spent). Whether it did, which may free a unit sooner.
    pub(crate) fn give_back(&mut self, dated: u64) -> bool {
        !self.shared && self.log.give_back(dated)
    }

    /// The request whose unit was dated `dated` was answered at `now`: a measured unit ages
    /// out by the time that took (plus a tenth and 1 ms) past `per`, instead of the default
    /// margin. Whether it was dated earlier, which may free a unit sooner.
    pub(crate) fn answered(&mut self, dated: u64, now: u64) -> bool {
        if !self.measured {
            return false;
        }
        let Some(sooner) = self.sooner(now.saturating_sub(dated)) else {
            return false;
        };
        self.log.redate(dated, dated.saturating_sub(micros(sooner)))
    }

    /// How much sooner than the window a unit whose request was answered `took` µs after it
    /// was dated ages out: its margin is that time, plus a tenth and 1 ms, if that is shorter
    /// than the default one.
    pub(crate) fn sooner(&self, took: u64) -> Option<Duration> {
        let measured = took + took / 10 + 1000;
        let sooner = (self.window - self.per).checked_sub(measured)?;
        Some(Duration::from_micros(sooner))
    }

    /// How many tries found no unit so far.
    pub(crate) fn full(&self) -> u64 {
        self.full
    }
}
