//! The token core against a small reference model, step by step, over random sequences of
//! events: requests, login outcomes (ok, rejected, 5xx, 429 with `Retry-After`, abandoned with
//! its runtime), API answers (200, stale 401, `insufficient_scope` 401, `invalid_token` 401,
//! bare 401), replays, renewals and time jumps.
//!
//! The model is the behaviour table written as plainly as it reads: a token with its expiry, a
//! login or its failure, the paths that refused a fresh token, the streak, the cool-down. After
//! every event the core's decision must be the model's, and:
//! - a token is only ever sent before it expires;
//! - a request fails only when the model has a failure to fail with;
//! - one login at a time.

use crate::{
    challenge::Verdict,
    error::{Error, Kind},
    token::{
        Attempts, Core, Ended, Endpoint, Failure, Need, Obtained, Reason, Renew, Step, Timings,
        Unauthorized, UNAUTHORIZED_COOLDOWN,
    },
};
use http::{HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};
use tokio::time::Instant;

const TIMINGS: Timings = Timings {
    refresh_before: Duration::from_secs(300),
    login_timeout: Duration::from_secs(30),
};
const PATHS: [&str; 4] = ["/flows", "/admin", "/billing", "/users"];

#[derive(Clone, Copy, Debug)]
enum LoginOutcome {
    Ok { lifetime_secs: u64 },
    Rejected,
    Unavailable,
    Throttled { retry_after_secs: u64 },
    Abandoned,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Ok,
    Bare401,
    UnsendableToken,
    InsufficientScope,
}

#[derive(Clone, Debug)]
enum Event {
    /// A request needs a token.
    Request,
    /// The first request to see the token in its window asks for its renewal.
    Renew,
    Login(LoginOutcome),
    /// The API answered a request that carried the current token (or the one before it).
    Api {
        path: usize,
        answer: Answer,
        stale: bool,
    },
    /// A replay with the current token was answered.
    Replay {
        path: usize,
        refused: bool,
    },
    Advance(Duration),
}

/// A decision, by kind, as both sides report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    None,
    Send,
    Wait,
    Start(Reason),
    Fail,
    Keep,
    Refused,
    Renew {
        discard: bool,
    },
    /// Check the token with a GET to this path (index in `PATHS`).
    Check(usize),
    RenewLater,
    Installed,
    Failed,
}

#[derive(Clone, Debug)]
struct ModelToken {
    generation: u64,
    obtained: Duration,
    lifetime: Duration,
}

#[derive(Clone, Debug)]
struct ModelFailure {
    transient: bool,
    retry_at: Duration,
}

/// (generation, until, proven, kept the last 401, paths that answered, the last path that
/// answered a GET with a 2xx)
type ModelCooldown = (u64, Duration, bool, bool, HashSet<usize>, Option<usize>);

#[derive(Clone, Debug, Default)]
struct Model {
    now: Duration,
    generation: u64,
    token: Option<ModelToken>,
    ever_had: bool,
    discarded: bool,
    running: Option<Reason>,
    failure: Option<ModelFailure>,
    streak: u32,
    refused: HashMap<usize, (Duration, u32)>,
    cooldown: Option<ModelCooldown>,
    decision: Option<Decision>,
}

fn grace(times: u32) -> Duration {
    match times {
        0 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 1).min(9)).min(Duration::from_secs(300)),
    }
}

impl Model {
    /// When the token stops being sent: a tenth of its life (at most 5 s) before it expires.
    fn send_by(token: &ModelToken) -> Duration {
        token.obtained + token.lifetime - (token.lifetime / 10).min(Duration::from_secs(5))
    }

    fn start(&mut self, reason: Reason) -> Decision {
        self.running = Some(reason);
        Decision::Start(reason)
    }

    fn step(&mut self, event: &Event) -> Decision {
        let now = self.now;
        match *event {
            Event::Advance(by) => {
                self.now += by;
                Decision::None
            }
            Event::Request => {
                if self.token.as_ref().is_some_and(|t| now < Self::send_by(t)) {
                    Decision::Send
                } else if self.running.is_some() {
                    Decision::Wait
                } else if self.failure.as_ref().is_some_and(|f| {
                    now < f.retry_at && (!f.transient || f.retry_at > now + TIMINGS.login_timeout)
                }) {
                    Decision::Fail
                } else {
                    let reason = match (&self.token, self.discarded, self.ever_had) {
                        (None, false, false) => Reason::FirstUse,
                        (None, true, _) => Reason::Unauthorized,
                        _ => Reason::Expired,
                    };
                    self.start(reason)
                }
            }
            Event::Renew => match (&self.token, &self.running, &self.failure) {
                (None, _, _) | (_, Some(_), _) => Decision::None,
                (_, None, Some(f)) if now < f.retry_at => Decision::RenewLater,
                _ => self.start(Reason::Renewal),
            },
            Event::Login(outcome) => {
                let Some(reason) = self.running.take() else {
                    return Decision::None;
                };
                let failure = |transient, wait| {
                    Some(ModelFailure {
                        transient,
                        retry_at: now + Duration::from_secs(wait),
                    })
                };
                match outcome {
                    LoginOutcome::Ok { lifetime_secs } => {
                        self.generation += 1;
                        self.token = Some(ModelToken {
                            generation: self.generation,
                            obtained: now,
                            lifetime: Duration::from_secs(lifetime_secs),
                        });
                        (self.ever_had, self.discarded, self.failure) = (true, false, None);
                        self.cooldown = (reason == Reason::Unauthorized).then(|| {
                            let until = now + UNAUTHORIZED_COOLDOWN;
                            (self.generation, until, false, false, HashSet::new(), None)
                        });
                        return Decision::Installed;
                    }
                    LoginOutcome::Rejected => self.failure = failure(false, 5),
                    LoginOutcome::Unavailable => self.failure = failure(true, 1),
                    LoginOutcome::Throttled { retry_after_secs } => {
                        self.failure = failure(true, retry_after_secs)
                    }
                    LoginOutcome::Abandoned => return Decision::None,
                }
                Decision::Failed
            }
            Event::Api {
                path,
                answer,
                stale,
            } => {
                let generation = self.generation.saturating_sub(u64::from(stale));
                if answer == Answer::Ok {
                    self.answered(generation, path, true);
                    return Decision::None;
                }
                if answer == Answer::InsufficientScope {
                    return Decision::Refused;
                }
                if self
                    .refused
                    .get(&path)
                    .is_some_and(|(until, _)| now < *until)
                {
                    return Decision::Keep;
                }
                let Some(token) = self.token.as_ref().filter(|t| t.generation == generation) else {
                    return Decision::Renew { discard: false };
                };
                if now < token.obtained + grace(self.streak.saturating_sub(1)) {
                    return Decision::Keep;
                }
                if let Some((cooled, until, proven, kept_last, answered, probe)) =
                    &mut self.cooldown
                {
                    if *cooled == generation
                        && *proven
                        && answer == Answer::Bare401
                        && now < *until
                        && !*kept_last
                        && !answered.contains(&path)
                    {
                        if let Some(probe) = probe {
                            return Decision::Check(*probe);
                        }
                        *kept_last = true;
                        return Decision::Keep;
                    }
                }
                (self.token, self.discarded, self.cooldown) = (None, true, None);
                Decision::Renew { discard: true }
            }
            Event::Replay { path, refused } => {
                if self.token.is_none() {
                    return Decision::None;
                }
                if !refused {
                    self.answered(self.generation, path, true);
                } else {
                    self.streak = (self.streak + 1).min(16);
                    let (until, times) = self.refused.entry(path).or_default();
                    *times += 1;
                    *until = now + grace(*times);
                }
                Decision::None
            }
        }
    }

    /// `checkable`: a GET answered with a 2xx (every `Answer::Ok`; not a replay's answer).
    fn answered(&mut self, generation: u64, path: usize, checkable: bool) {
        self.streak = 0;
        self.refused.remove(&path);
        self.cooldown = self.cooldown.take().filter(|c| self.now < c.1);
        if let Some((cooled, _, proven, kept_last, answered, probe)) = &mut self.cooldown {
            if *cooled == generation {
                (*proven, *kept_last) = (true, false);
                answered.insert(path);
                if checkable {
                    *probe = Some(path);
                }
            }
        }
    }
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Event;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(model: &Model) -> BoxedStrategy<Event> {
        // To the edges of the token's life: just before and after it stops being sent.
        let edge = model
            .token
            .as_ref()
            .map_or(Duration::from_secs(1), |token| {
                Model::send_by(token).saturating_sub(model.now)
            });
        let edges = prop_oneof![
            Just(edge.saturating_sub(Duration::from_millis(1))),
            Just(edge),
            Just(edge + Duration::from_millis(1)),
        ];
        let outcome = prop_oneof![
            4 => (2u64..200_000).prop_map(|lifetime_secs| LoginOutcome::Ok { lifetime_secs }),
            1 => Just(LoginOutcome::Rejected),
            1 => Just(LoginOutcome::Unavailable),
            1 => (1u64..120).prop_map(|retry_after_secs| LoginOutcome::Throttled { retry_after_secs }),
            1 => Just(LoginOutcome::Abandoned),
        ];
        let answer = prop_oneof![
            3 => Just(Answer::Ok),
            3 => Just(Answer::Bare401),
            1 => Just(Answer::UnsendableToken),
            1 => Just(Answer::InsufficientScope),
        ];
        let advance = prop_oneof![
            Just(Duration::from_millis(100)),
            Just(Duration::from_secs(1)),
            Just(Duration::from_secs(4)),
            Just(Duration::from_secs(11)),
            Just(Duration::from_secs(3_600)),
            Just(Duration::from_secs(86_400)),
        ];
        prop_oneof![
            4 => Just(Event::Request),
            1 => Just(Event::Renew),
            3 => outcome.prop_map(Event::Login),
            5 => (0..PATHS.len(), answer, prop::bool::weighted(0.2))
                .prop_map(|(path, answer, stale)| Event::Api { path, answer, stale }),
            2 => (0..PATHS.len(), any::<bool>())
                .prop_map(|(path, refused)| Event::Replay { path, refused }),
            2 => advance.prop_map(Event::Advance),
            1 => edges.prop_map(Event::Advance),
        ]
        .boxed()
    }

    fn apply(mut state: Model, event: &Event) -> Model {
        state.decision = Some(state.step(event));
        state
    }
}

/// The core, driven as the driver drives it, at a clock of its own.
struct Harness {
    core: Core,
    start: Instant,
    now: Instant,
    running: Option<u64>,
    /// Generation of the current token and the one before it.
    generations: (u64, u64),
    /// When the current token expires.
    expires: Option<Instant>,
}

/// A replay's answer: 401 if refused, else 200.
fn status(refused: bool) -> StatusCode {
    if refused {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

fn endpoint(path: usize) -> Endpoint {
    Endpoint {
        method: Method::GET,
        origin: String::new(),
        path: PATHS[path].to_owned(),
    }
}

impl Harness {
    fn step(&mut self, event: Event) -> Decision {
        let now = self.now;
        match event {
            Event::Advance(by) => {
                self.now += by;
                Decision::None
            }
            Event::Request => match self.core.need(now, None, 0) {
                Need::Send => {
                    let expires = self
                        .expires
                        .expect("a token is sent only when there is one");
                    assert!(now < expires, "an expired token is sent");
                    Decision::Send
                }
                Need::Wait(id) => {
                    assert_eq!(Some(id), self.running, "waits on the login in flight");
                    Decision::Wait
                }
                Need::Start(start) => {
                    assert_eq!(self.running, None, "two logins at once");
                    self.running = Some(start.id);
                    Decision::Start(start.reason)
                }
                Need::Fail(_) => Decision::Fail,
            },
            Event::Renew => match self.core.renew(now, self.generations.0) {
                Renew::Start(start) => {
                    assert_eq!(self.running, None, "two logins at once");
                    self.running = Some(start.id);
                    Decision::Start(start.reason)
                }
                Renew::Nothing => Decision::None,
                Renew::Later(_) => Decision::RenewLater,
            },
            Event::Login(outcome) => {
                let Some(id) = self.running.take() else {
                    return Decision::None;
                };
                let failure = |error, wait| {
                    Err(Failure {
                        error,
                        retry_at: now + Duration::from_secs(wait),
                        attempts: 1,
                    })
                };
                let outcome = match outcome {
                    LoginOutcome::Abandoned => {
                        self.core.abandoned(id);
                        return Decision::None;
                    }
                    LoginOutcome::Ok { lifetime_secs } => Ok(Obtained {
                        header: HeaderValue::from_static("Bearer t"),
                        obtained_at: now,
                        lifetime: Duration::from_secs(lifetime_secs),
                        shared: false,
                        scope: None,
                    }),
                    LoginOutcome::Rejected => failure(
                        Error::new(Kind::Rejected(StatusCode::UNAUTHORIZED, false)),
                        5,
                    ),
                    LoginOutcome::Unavailable => {
                        let status = StatusCode::SERVICE_UNAVAILABLE;
                        failure(Error::new(Kind::Status(status, None)), 1)
                    }
                    LoginOutcome::Throttled { retry_after_secs } => {
                        let wait = Some(Duration::from_secs(retry_after_secs));
                        let error = Error::new(Kind::Status(StatusCode::TOO_MANY_REQUESTS, wait));
                        failure(error, retry_after_secs)
                    }
                };
                let lifetime = outcome.as_ref().ok().map(|o| o.lifetime);
                match self.core.login_ended(id, now, outcome) {
                    Ended::Installed { generation, .. } => {
                        self.generations = (generation, self.generations.0);
                        self.expires = lifetime.map(|lifetime| now + lifetime);
                        Decision::Installed
                    }
                    Ended::Failed { .. } => Decision::Failed,
                    Ended::Stale => panic!("the login in flight ended as stale"),
                }
            }
            Event::Api {
                path,
                answer,
                stale,
            } => {
                let generation = if stale {
                    self.generations.1
                } else {
                    self.generations.0
                };
                let verdict = match answer {
                    Answer::Ok => {
                        self.core.answered(now, generation, endpoint(path), true);
                        return Decision::None;
                    }
                    Answer::Bare401 => Verdict::Unknown,
                    Answer::UnsendableToken => Verdict::UnsendableToken,
                    Answer::InsufficientScope => Verdict::RequestRefused,
                };
                match self
                    .core
                    .unauthorized(now, generation, &endpoint(path), verdict)
                {
                    Unauthorized::Keep => Decision::Keep,
                    Unauthorized::Refused => Decision::Refused,
                    Unauthorized::Check(probe) => {
                        Decision::Check(PATHS.iter().position(|p| *p == probe.path).unwrap())
                    }
                    Unauthorized::Renew { discard } => {
                        if discard {
                            self.expires = None;
                        }
                        Decision::Renew { discard }
                    }
                }
            }
            Event::Replay { path, refused } => {
                if self.expires.is_some() {
                    let endpoint = endpoint(path);
                    self.core
                        .replayed(now, self.generations.0, endpoint, status(refused));
                }
                Decision::None
            }
        }
    }
}

struct CoreTest;

impl StateMachineTest for CoreTest {
    type SystemUnderTest = Harness;
    type Reference = Reference;

    fn init_test(_: &Model) -> Harness {
        let start = Instant::now();
        Harness {
            core: Core::new(TIMINGS, None, start),
            start,
            now: start,
            running: None,
            generations: (0, 0),
            expires: None,
        }
    }

    fn apply(mut harness: Harness, model: &Model, event: Event) -> Harness {
        let decision = harness.step(event.clone());
        assert_eq!(Some(decision), model.decision, "after {event:?}");
        harness
    }

    fn check_invariants(harness: &Harness, model: &Model) {
        assert_eq!(harness.now - harness.start, model.now);
        assert_eq!(harness.core.running().is_some(), model.running.is_some());
        if model.decision == Some(Decision::Fail) {
            assert!(
                model.failure.is_some(),
                "a failure with nothing to fail with"
            );
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_core_agrees_with_the_model(sequential 1..120 => CoreTest);
}

proptest! {
    /// A crawler over paths the account may not see: every path answers one bare 401, with a
    /// 200 from a path it may use between them. Whatever the pace, 401s cost at most one login
    /// in any 10 s after the first, and a revocation after them is still recovered.
    #[test]
    fn distinct_401s_between_200s_cost_a_login_per_cooldown(
        gaps in prop::collection::vec(0u64..3_000, 1..2_000),
    ) {
        let start = Instant::now();
        let mut core = Core::new(TIMINGS, None, start);
        let (mut now, mut logins, mut generation) = (start, 0u64, 0);
        let log_in = |core: &mut Core, now: Instant, logins: &mut u64| {
            let Need::Start(start) = core.need(now, None, 0) else { return None };
            *logins += 1;
            let obtained = Obtained {
                header: HeaderValue::from_static("Bearer t"),
                obtained_at: now,
                lifetime: Duration::from_secs(86_400),
                shared: false,
                scope: None,
            };
            match core.login_ended(start.id, now, Ok(obtained)) {
                Ended::Installed { generation, .. } => Some(generation),
                _ => None,
            }
        };
        generation = log_in(&mut core, now, &mut logins).unwrap_or(generation);
        for (i, gap) in gaps.iter().enumerate() {
            now += Duration::from_millis(*gap);
            let private = Endpoint { method: Method::GET, origin: String::new(), path: format!("/private/{i}") };
            match core.unauthorized(now, generation, &private, Verdict::Unknown) {
                Unauthorized::Renew { .. } => {
                    generation = log_in(&mut core, now, &mut logins).unwrap_or(generation);
                    // The replay is refused: this path refuses fresh tokens.
                    core.replayed(now, generation, private, StatusCode::UNAUTHORIZED);
                }
                // The check answers 200: the token is good, the 401 is the path's.
                Unauthorized::Check(probe) => core.answered(now, generation, probe, true),
                _ => {}
            }
            core.answered(now, generation, endpoint(0), true);
        }
        let elapsed = (now - start).as_secs();
        prop_assert!(logins <= 2 + elapsed / 10, "{logins} logins in {elapsed} s");

        // A revocation: the path that answered now answers 401.
        now += Duration::from_millis(1);
        let decision = core.unauthorized(now, generation, &endpoint(0), Verdict::Unknown);
        prop_assert_eq!(decision, Unauthorized::Renew { discard: true });
    }

    /// An attempt that answers before the login's deadline is never cut: the login takes its
    /// token, with at most two attempts in flight.
    #[test]
    fn a_slow_attempt_that_answers_in_time_is_never_cut(
        answer_ms in 1u64..29_999,
        failures in prop::collection::vec(0u64..29_999, 0..4),
    ) {
        let start = Instant::now();
        let mut attempts = Attempts::new(&TIMINGS, start, None);
        let answer_at = start + Duration::from_millis(answer_ms);
        let mut failures: Vec<Instant> =
            failures.into_iter().map(|ms| start + Duration::from_millis(ms)).collect();
        failures.sort();
        let mut failures = failures.into_iter().peekable();
        let (mut now, mut flying) = (start, Vec::new());
        // Bounded: a step that neither starts, fails nor moves time would loop for ever.
        for step in 0.. {
            prop_assert!(step < 1_000, "no progress after 1,000 steps, at {:?}", now - start);
            match attempts.step(now) {
                Step::Start(id) => {
                    flying.push(id);
                    prop_assert!(flying.len() <= 2, "{flying:?}");
                }
                Step::Fail(failure) => {
                    prop_assert!(false, "gave up at {:?}: {}", now - start, failure.error)
                }
                Step::Wait(until) => {
                    prop_assert!(until > now, "Wait({:?}) does not move time", until - start);
                    // The first attempt answers at `answer_at`; a hedge may fail before.
                    while failures.peek().is_some_and(|at| *at < now) {
                        failures.next();
                    }
                    let fail_at = failures.peek().copied().filter(|_| flying.len() > 1);
                    let next = until.min(fail_at.unwrap_or(until));
                    if next >= answer_at {
                        break;
                    }
                    now = next;
                    if Some(now) == fail_at {
                        failures.next();
                        let id = flying.pop().unwrap();
                        let error = Error::new(Kind::Status(StatusCode::BAD_GATEWAY, None));
                        attempts.failed(id, now, error, 0.5);
                    }
                }
            }
        }
        prop_assert!(flying.contains(&1), "the first attempt is still in flight");
    }
}
