//! The budget's rules against a small reference model, step by step, over random sequences of
//! events: tries at a unit by requests and logins (asking a store that gives a unit, has none,
//! or fails; or gives one while a 429 seen meanwhile pauses the budget), logins that wait and
//! are served, 429 pauses, units given back unsent, answers that time a unit's margin, and
//! time.
//!
//! The model is the rules written as plainly as they read: every unit ever taken with its
//! date, counted while its date is within the window; a pause; the logins waiting; the store's
//! health. After every event the rules' decision must be the model's, and, whatever the model
//! says:
//! - never more than `limit` units, taken and not given back, in any `per` (a budget kept in
//!   the process; a store's units are the store's to count);
//! - no unit while a 429's pause lasts, from the process's log or from the store;
//! - no unit for a request while a login waits for one;
//! - a store that failed is asked again at most once a second.

use crate::budget::rules::{Purpose, Rules, Turn, STORE_PROBE};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::time::Duration;

const LIMIT: u32 = 3;
const PER: u64 = 1_000_000;
/// `PER` and the default margin (250 ms: a twentieth of a second is less).
const WINDOW: u64 = 1_250_000;
const PROBE: u64 = 1_000_000;

/// What a store does when asked.
#[derive(Clone, Copy, Debug)]
enum Store {
    /// It gives a unit, answering after this many microseconds.
    Unit(u64),
    /// It gives a unit as [`Unit`](Store::Unit), and meanwhile another request's 429 paused the
    /// budget (for this many microseconds): the pause had not reached the store.
    UnitDuringPause(u64, u64),
    /// It has none for this long.
    Full(Duration),
    /// It fails (or takes longer than its deadline), after this many microseconds.
    Fails(u64),
}

#[derive(Clone, Debug)]
enum Event {
    Take(Purpose, Store),
    LoginWaits,
    LoginServed,
    /// A 429: a pause of this many microseconds.
    Pause(u64),
    /// The pause's write to the store answered, or failed.
    PauseWritten(bool),
    /// The `n`th outstanding unit goes back unsent.
    GiveBack(usize),
    /// The `n`th outstanding unit's request is answered now.
    Answered(usize),
    Advance(u64),
}

#[derive(Clone, Debug)]
struct Model {
    shared: bool,
    measured: bool,
    now: u64,
    /// The dates of the units in the process's log (taken, recorded from the store, or
    /// dated earlier by an answer).
    units: Vec<u64>,
    paused_until: u64,
    logins_waiting: usize,
    probe_at: u64,
    /// The units handed out and not yet given back or answered: their dates.
    outstanding: Vec<u64>,
    /// The last event's decision.
    decision: Option<Turn>,
}

impl Model {
    fn live(&self, now: u64) -> impl Iterator<Item = u64> + '_ {
        self.units
            .iter()
            .copied()
            .filter(move |date| date + WINDOW > now)
    }

    /// A try from the process's own log.
    fn own(&mut self, now: u64) -> Turn {
        if now < self.paused_until {
            return Turn::Until(self.paused_until);
        }
        if self.live(now).count() >= LIMIT as usize {
            return Turn::Until(self.live(now).min().unwrap() + WINDOW);
        }
        self.units.push(now);
        self.outstanding.push(now);
        Turn::Unit
    }

    fn take(&mut self, purpose: Purpose, store: Store) -> Turn {
        let asked = self.now;
        if purpose == Purpose::Request && self.logins_waiting > 0 {
            return Turn::AfterLogin;
        }
        if !self.shared || asked < self.probe_at {
            return self.own(asked);
        }
        if asked < self.paused_until {
            return Turn::Until(self.paused_until);
        }
        if let Store::UnitDuringPause(_, pause) = store {
            self.paused_until = self.paused_until.max(asked + pause);
        }
        match store {
            Store::Unit(after) | Store::UnitDuringPause(after, _) => {
                self.now += after;
                self.probe_at = 0;
                // Recorded, keeping the last window's: the store counts; the log is for an outage.
                let mut live: Vec<u64> = self.live(asked).collect();
                live.sort_unstable();
                while live.len() >= LIMIT as usize {
                    live.remove(0);
                }
                live.push(asked);
                self.units = live;
                if self.now < self.paused_until {
                    Turn::Until(self.paused_until)
                } else {
                    self.outstanding.push(asked);
                    Turn::Unit
                }
            }
            Store::Full(wait) => {
                self.probe_at = 0;
                Turn::Until(asked + wait.as_micros() as u64)
            }
            Store::Fails(after) => {
                self.now += after;
                self.probe_at = self.now + PROBE;
                // Dated when the store failed.
                self.own(self.now)
            }
        }
    }

    fn step(&mut self, event: &Event) -> Option<Turn> {
        match *event {
            Event::Take(purpose, store) => return Some(self.take(purpose, store)),
            Event::LoginWaits => self.logins_waiting += 1,
            Event::LoginServed => self.logins_waiting -= 1,
            Event::Pause(pause) => self.paused_until = self.paused_until.max(self.now + pause),
            Event::PauseWritten(true) => self.probe_at = 0,
            Event::PauseWritten(false) => self.probe_at = self.now + PROBE,
            Event::GiveBack(n) => {
                let date = self.outstanding.remove(n % self.outstanding.len());
                if !self.shared {
                    if let Some(at) = self.units.iter().position(|unit| *unit == date) {
                        self.units.remove(at);
                    }
                }
            }
            Event::Answered(n) => {
                let date = self.outstanding.remove(n % self.outstanding.len());
                // Aged out by `PER` and what the answer took (plus a tenth and 1 ms), if that
                // is sooner than the default margin.
                let took = self.now - date;
                let ages_out = date + PER + took + took / 10 + 1000;
                if self.measured && ages_out < date + WINDOW {
                    if let Some(at) = self.units.iter().position(|unit| *unit == date) {
                        // No earlier than the clock's start.
                        self.units[at] = ages_out.saturating_sub(WINDOW);
                    }
                }
            }
            Event::Advance(by) => self.now += by,
        }
        None
    }
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Event;

    fn init_state() -> BoxedStrategy<Model> {
        (any::<bool>(), any::<bool>())
            .prop_map(|(shared, measured)| Model {
                shared,
                measured: measured && !shared,
                now: 0,
                units: Vec::new(),
                paused_until: 0,
                logins_waiting: 0,
                probe_at: 0,
                outstanding: Vec::new(),
                decision: None,
            })
            .boxed()
    }

    fn transitions(model: &Model) -> BoxedStrategy<Event> {
        let purpose = prop_oneof![3 => Just(Purpose::Request), 1 => Just(Purpose::Login)];
        let store = prop_oneof![
            3 => (0u64..300_000).prop_map(Store::Unit),
            1 => (0u64..300_000, 1u64..3_000_000)
                .prop_map(|(after, pause)| Store::UnitDuringPause(after, pause)),
            1 => (1u64..1_500).prop_map(|ms| Store::Full(Duration::from_millis(ms))),
            1 => (0u64..300_000).prop_map(Store::Fails),
        ];
        // Times at the edges: a unit ageing out, a pause ending, a probe coming due.
        let mut edges: Vec<u64> = model
            .live(model.now)
            .map(|date| date + WINDOW)
            .chain([model.paused_until, model.probe_at])
            .filter(|at| *at > model.now)
            .flat_map(|at| [at - model.now - 1, at - model.now])
            .collect();
        edges.push(1);
        let advance = prop_oneof![
            3 => 1u64..1_500_000,
            1 => proptest::sample::select(edges),
        ];
        prop_oneof![
            6 => (purpose, store).prop_map(|(purpose, store)| Event::Take(purpose, store)),
            1 => Just(Event::LoginWaits),
            1 => Just(Event::LoginServed),
            1 => (1u64..3_000_000).prop_map(Event::Pause),
            1 => any::<bool>().prop_map(Event::PauseWritten),
            1 => any::<usize>().prop_map(Event::GiveBack),
            2 => any::<usize>().prop_map(Event::Answered),
            3 => advance.prop_map(Event::Advance),
        ]
        .boxed()
    }

    fn preconditions(model: &Model, event: &Event) -> bool {
        match event {
            Event::LoginServed => model.logins_waiting > 0,
            Event::PauseWritten(_) => model.shared,
            Event::GiveBack(_) | Event::Answered(_) => !model.outstanding.is_empty(),
            _ => true,
        }
    }

    fn apply(mut model: Model, event: &Event) -> Model {
        model.decision = model.step(event);
        model
    }
}

/// The rules, driven as the gate drives them, and what they handed out.
struct Harness {
    rules: Rules,
    shared: bool,
    now: u64,
    logins_waiting: usize,
    paused_until: u64,
    /// When a store operation last failed.
    failed_at: Option<u64>,
    /// Every unit handed out from the process's own log: its date, and whether it went back.
    handed: Vec<(u64, bool)>,
    outstanding: Vec<u64>,
}

impl Harness {
    fn step(&mut self, event: &Event) -> Option<Turn> {
        match *event {
            Event::Take(purpose, store) => return Some(self.take(purpose, store)),
            Event::LoginWaits => {
                self.logins_waiting += 1;
                self.rules.login_waits();
            }
            Event::LoginServed => {
                self.logins_waiting -= 1;
                self.rules.login_served();
            }
            Event::Pause(pause) => {
                self.paused_until = self.paused_until.max(self.now + pause);
                self.rules.pause(self.now + pause);
            }
            Event::PauseWritten(true) => self.store_answered(),
            Event::PauseWritten(false) => self.store_failed(),
            Event::GiveBack(n) => {
                let date = self.outstanding.remove(n % self.outstanding.len());
                if let Some(unit) = self
                    .handed
                    .iter_mut()
                    .find(|(at, back)| *at == date && !back)
                {
                    unit.1 = true;
                }
                self.rules.give_back(date);
            }
            Event::Answered(n) => {
                let date = self.outstanding.remove(n % self.outstanding.len());
                self.rules.answered(date, self.now);
            }
            Event::Advance(by) => self.now += by,
        }
        None
    }

    /// A store operation answered: the rules say whether it had been down (to say it is back).
    fn store_answered(&mut self) {
        let was_down = self.failed_at.take().is_some();
        assert_eq!(self.rules.store_answered(), was_down, "the store back");
    }

    /// A store operation failed now: the rules say whether it is the outage's first (to warn
    /// once).
    fn store_failed(&mut self) {
        let first = self.failed_at.replace(self.now).is_none();
        assert_eq!(
            self.rules.store_failed(self.now),
            first,
            "the outage's first failure"
        );
    }

    fn take(&mut self, purpose: Purpose, store: Store) -> Turn {
        let asked = self.now;
        // The turn, and the unit's date if it is one from the process's own log.
        let (turn, own) = match self.rules.take(asked, purpose) {
            None => {
                assert!(self.shared, "a budget of its own asks no store");
                if let Some(failed) = self.failed_at {
                    assert!(
                        asked >= failed + PROBE,
                        "a failed store asked again within a second"
                    );
                }
                if let Store::UnitDuringPause(_, pause) = store {
                    self.paused_until = self.paused_until.max(asked + pause);
                    self.rules.pause(asked + pause);
                }
                match store {
                    Store::Unit(after) | Store::UnitDuringPause(after, _) => {
                        self.now += after;
                        self.store_answered();
                        (self.rules.stored(asked, self.now, None), None)
                    }
                    Store::Full(wait) => {
                        self.store_answered();
                        (self.rules.stored(asked, self.now, Some(wait)), None)
                    }
                    Store::Fails(after) => {
                        self.now += after;
                        self.store_failed();
                        (self.rules.own(self.now), Some(self.now))
                    }
                }
            }
            Some(turn) => (turn, Some(asked)),
        };
        if turn == Turn::Unit {
            assert!(self.now >= self.paused_until, "a unit during a pause");
            if purpose == Purpose::Request {
                assert_eq!(
                    self.logins_waiting, 0,
                    "a request's unit while a login waits"
                );
            }
            let date = own.unwrap_or(asked);
            self.outstanding.push(date);
            if let Some(date) = own {
                self.handed.push((date, false));
            }
            let in_per = self
                .handed
                .iter()
                .filter(|(at, back)| !back && *at + PER > date)
                .count();
            assert!(
                self.shared || in_per <= LIMIT as usize,
                "{in_per} units in one window"
            );
        }
        turn
    }
}

struct BudgetTest;

impl StateMachineTest for BudgetTest {
    type SystemUnderTest = Harness;
    type Reference = Reference;

    fn init_test(model: &Model) -> Harness {
        let window = Duration::from_micros(WINDOW);
        let rules = Rules::new(
            LIMIT,
            Duration::from_micros(PER),
            window,
            model.measured,
            model.shared,
        );
        assert_eq!(Duration::from_micros(PROBE), STORE_PROBE);
        Harness {
            rules,
            shared: model.shared,
            now: 0,
            logins_waiting: 0,
            paused_until: 0,
            failed_at: None,
            handed: Vec::new(),
            outstanding: Vec::new(),
        }
    }

    fn apply(mut harness: Harness, model: &Model, event: Event) -> Harness {
        let decision = harness.step(&event);
        assert_eq!(decision, model.decision, "after {event:?}");
        harness
    }

    fn check_invariants(harness: &Harness, model: &Model) {
        assert_eq!(harness.now, model.now);
        assert_eq!(harness.outstanding, model.outstanding);
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_budget_rules_agree_with_the_model(sequential 1..150 => BudgetTest);
}
