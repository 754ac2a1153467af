//! The token core: every rule of a token's life, as a state machine that decides and does
//! nothing.
//!
//! [`Core`] holds one state and takes events: a request needs a token ([`Core::need`]), a token
//! is due for renewal ([`Core::renew`]), a login ended or was abandoned ([`Core::login_ended`],
//! [`Core::abandoned`]), the API answered ([`Core::answered`], [`Core::unauthorized`],
//! [`Core::replayed`]), a shared store offers a token ([`Core::takes`]). Each returns a decision
//! named for what the caller does next. The time is an input (`now`), and so is the jitter of a
//! back-off ([`Attempts::failed`]): the core reads no clock, draws no random number, holds no
//! channel or task and logs nothing, so a test is a table of "this state, this event, this time:
//! this decision". The driver ([`crate::cache`]) carries the decisions out on Tokio, and the
//! adapters (the tower service, the reqwest middleware) only translate requests and answers into
//! the driver's calls.
//!
//! The rules, each in one place here:
//! - when to log in ([`Core::need`]), when to renew ([`Timings::schedule`], [`Core::renew`]);
//! - one login at a time, and what its waiters get ([`Core::need`] with the login waited on);
//! - the attempts inside one login: back-off, `Retry-After`, a hedge beside a slow attempt, the
//!   deadline ([`Attempts`]);
//! - the back-off after a failed login and failing fast ([`Core::need`]);
//! - what a 401 means ([`Core::unauthorized`]): the challenge's verdict, endpoints that refuse
//!   fresh tokens, the streak of such refusals, and the cool-down that bounds the logins 401s
//!   cause;
//! - which stored token may replace this process's ([`Core::takes`]).

use crate::{challenge::Verdict, error::Error};
use http::{HeaderValue, Method, StatusCode};
use std::{
    collections::{HashMap, HashSet},
    fmt,
    time::Duration,
};
use tokio::time::Instant;

mod attempts;
mod decisions;
mod state;
mod timer;

pub(crate) use attempts::{Attempts, Step};
/// The core's name for [`LoginReason`].
pub(crate) use decisions::LoginReason as Reason;
pub use decisions::LoginReason;
pub(crate) use decisions::*;
pub use state::TokenState;
pub(crate) use timer::Due;

/// Back-off after a login the endpoint refused or could not answer usefully: 5 s doubling to
/// 5 min, so that rejected credentials cost the account a handful of attempts an hour.
const REJECTED_BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));
/// Back-off between the attempts of one login after a failure that goes away by itself (5xx,
/// 429, no connection): 250 ms doubling to 2 s, so a login recovers within 2 to 3 s of the
/// endpoint coming back.
const TRANSIENT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(2));
/// The longest 401s are taken as the API's answer before the layer tries a new token again.
const MAX_REFUSAL_GRACE: Duration = Duration::from_secs(300);
/// The most endpoints whose refusals (or answers, in a cool-down) are remembered at once.
const MAX_ENDPOINTS: usize = 1024;
/// How long after a login that a 401 caused, once its token proved good, a 401 from an endpoint
/// that has not answered that token is taken as the API's answer: at most one login in any
/// 10 s is caused by 401s from endpoints the account may not see.
pub(crate) const UNAUTHORIZED_COOLDOWN: Duration = Duration::from_secs(10);
/// The most logins a request starts itself when the ones it waited on were abandoned.
const MAX_RESTARTS: u32 = 3;

/// The current token, as the core knows it.
#[derive(Clone, Debug)]
struct Current {
    generation: u64,
    header: HeaderValue,
    obtained_at: Instant,
    renew_at: Instant,
    send_by: Instant,
    shared: bool,
    deadlines: timer::Deadlines,
}

/// Where logins are: one of three, never two at once.
#[derive(Clone, Debug, Default)]
enum Login {
    /// No login in flight, and the last one (if any) succeeded.
    #[default]
    Idle,
    /// Login `id` in flight: every request that needs a token waits on it.
    Running {
        id: u64,
        reason: Reason,
        /// The failure it follows, if any: kept for the back-off and `last_error`.
        after: Option<Failure>,
    },
    /// The last login failed.
    Failed(Failure),
}

/// After a login a 401 caused: its token, once proven good, keeps 401s from paths that have
/// not answered it from costing another login, until `until`.
#[derive(Clone, Debug)]
struct Cooldown {
    generation: u64,
    until: Instant,
    proven: bool,
    /// Whether the last answer to that token was a 401 kept by this rule: a second in a row
    /// is a revocation.
    kept_last: bool,
    /// Paths that answered that token with something other than 401, with their origins: a
    /// 401 from one of these is a revocation, believed at once.
    answered: HashSet<(String, String)>,
    /// For each origin, the last `GET` that answered that token there with a 2xx: what settles
    /// a bare 401 from that origin. A path that answered one origin says nothing of another.
    probes: HashMap<String, Endpoint>,
}

/// An endpoint that refused a fresh token: its 401s are returned as they are until `until`.
#[derive(Clone, Debug)]
struct Refused {
    until: Instant,
    times: u32,
}

/// The token core. See the [module documentation](self).
#[derive(Clone, Debug)]
pub(crate) struct Core {
    timings: Timings,
    /// Whether the token is an API key: never aged, never renewed, no login behind it.
    api_key: bool,
    /// Generation of the last token made current.
    generation: u64,
    current: Option<Current>,
    /// The last token a 401 discarded, until another is current, and when that 401 arrived.
    discarded: Option<(HeaderValue, Instant)>,
    login: Login,
    next_id: u64,
    /// The last login that failed and its error: what the requests that waited on it get.
    last_failed: Option<(u64, Error)>,
    /// A renewal was abandoned with its runtime: the next is waited for by its request.
    renewal_abandoned: bool,
    /// Why the last login started ran.
    last_reason: Option<Reason>,
    /// Consecutive replays refused with a fresh token, with no other answer between.
    streak: u32,
    refused: HashMap<Endpoint, Refused>,
    cooldown: Option<Cooldown>,
    /// The last check that settles a bare 401 (see [`Core::check_due`]).
    check: Option<timer::Check>,
}

impl Core {
    /// A core that logs in for its tokens, or whose token is an API key (`api_key`), current
    /// from the start as generation 0.
    pub(crate) fn new(timings: Timings, api_key: Option<HeaderValue>, now: Instant) -> Core {
        Core {
            timings,
            api_key: api_key.is_some(),
            generation: 0,
            current: api_key.map(|header| Current {
                generation: 0,
                header,
                obtained_at: now,
                renew_at: now,
                send_by: now,
                shared: false,
                deadlines: timer::Deadlines::default(),
            }),
            discarded: None,
            login: Login::Idle,
            next_id: 1,
            last_failed: None,
            renewal_abandoned: false,
            last_reason: None,
            streak: 0,
            refused: HashMap::new(),
            cooldown: None,
            check: None,
        }
    }

    /// Generation of the current token, if there is one that may be sent at `now`.
    pub(crate) fn usable(&self, now: Instant) -> Option<u64> {
        self.current
            .as_ref()
            .filter(|current| self.api_key || now < current.send_by)
            .map(|current| current.generation)
    }

    /// The last login's error, until a login succeeds.
    pub(crate) fn last_error(&self) -> Option<&Error> {
        match &self.login {
            Login::Failed(failure) => Some(&failure.error),
            Login::Running { after, .. } => after.as_ref().map(|failure| &failure.error),
            Login::Idle => None,
        }
    }

    /// Why the last login (running or ended) ran.
    pub(crate) fn last_reason(&self) -> Option<Reason> {
        self.last_reason
    }

    /// The login in flight, if any.
    pub(crate) fn running(&self) -> Option<u64> {
        match self.login {
            Login::Running { id, .. } => Some(id),
            _ => None,
        }
    }

    /// A request needs a token at `now`; `waited` is the login it waited on, if any, and
    /// `restarts` how many logins it started after the ones it waited on were abandoned.
    pub(crate) fn need(&mut self, now: Instant, waited: Option<u64>, restarts: u32) -> Need {
        if let (Some(waited), Some((failed, error))) = (waited, &self.last_failed) {
            if waited == *failed {
                return Need::Fail(error.clone());
            }
        }
        if self.usable(now).is_some() {
            return Need::Send;
        }
        if let Login::Running { id, .. } = self.login {
            return Need::Wait(id);
        }
        if let Some(error) = self.fail_fast(now) {
            return Need::Fail(error);
        }
        if restarts >= MAX_RESTARTS {
            return Need::Fail(Error::new(crate::error::Kind::Abandoned));
        }
        let reason = match (&self.current, &self.discarded) {
            (None, None) if self.generation == 0 => Reason::FirstUse,
            (None, Some(_)) => Reason::Unauthorized,
            _ => Reason::Expired,
        };
        Need::Start(self.start(reason))
    }

    /// The error to fail with instead of starting a login: while a login that needs a fix
    /// backs off, or when the endpoint asked for a wait longer than a login may take.
    fn fail_fast(&self, now: Instant) -> Option<Error> {
        let Login::Failed(failure) = &self.login else {
            return None;
        };
        let waiting = now < failure.retry_at;
        let too_long = failure.retry_at > now + self.timings.login_timeout;
        (waiting && (!failure.error.is_transient() || too_long)).then(|| failure.error.clone())
    }

    /// Puts a login in flight.
    fn start(&mut self, reason: Reason) -> Start {
        let id = self.next_id;
        self.next_id += 1;
        let after = match &self.login {
            Login::Failed(failure) => Some(failure.clone()),
            Login::Running { after, .. } => after.clone(),
            Login::Idle => None,
        };
        let taken_up = reason == Reason::Renewal && std::mem::take(&mut self.renewal_abandoned);
        self.last_reason = Some(reason);
        self.login = Login::Running {
            id,
            reason,
            after: after.clone(),
        };
        let (replaces, refused_at) = match (&self.current, &self.discarded) {
            (Some(current), _) => (Some(current.header.clone()), None),
            (None, Some((header, at))) => (Some(header.clone()), Some(*at)),
            (None, None) => (None, None),
        };
        Start {
            id,
            reason,
            after,
            replaces,
            refused_at,
            taken_up,
        }
    }

    /// The token of `generation` entered its renewal window at `now` (the first request to see
    /// it so asks).
    pub(crate) fn renew(&mut self, now: Instant, generation: u64) -> Renew {
        if self.api_key || self.current.as_ref().map(|c| c.generation) != Some(generation) {
            return Renew::Nothing;
        }
        match &self.login {
            Login::Running { .. } => Renew::Nothing,
            Login::Failed(failure) if now < failure.retry_at => {
                let retry_at = failure.retry_at;
                self.renew_again_at(retry_at);
                Renew::Later(retry_at)
            }
            _ => Renew::Start(self.start(Reason::Renewal)),
        }
    }

    /// Login `id` ended at `now` with `outcome`.
    pub(crate) fn login_ended(
        &mut self,
        id: u64,
        now: Instant,
        outcome: Result<Obtained, Failure>,
    ) -> Ended {
        let Login::Running {
            id: running,
            reason,
            ..
        } = self.login
        else {
            return Ended::Stale;
        };
        if running != id {
            return Ended::Stale;
        }
        match outcome {
            Ok(obtained) => {
                self.login = Login::Idle;
                let (generation, renew_at, send_by) = self.install(obtained);
                if reason == Reason::Unauthorized {
                    self.cooldown = Some(Cooldown {
                        generation,
                        until: now + UNAUTHORIZED_COOLDOWN,
                        proven: false,
                        kept_last: false,
                        answered: HashSet::new(),
                        probes: HashMap::new(),
                    });
                }
                Ended::Installed {
                    generation,
                    renew_at,
                    send_by,
                }
            }
            Err(failure) => {
                let (error, retry_at) = (failure.error.clone(), failure.retry_at);
                self.login = Login::Failed(failure);
                self.last_failed = Some((id, error.clone()));
                self.renew_again_at(retry_at);
                Ended::Failed { error, retry_at }
            }
        }
    }

    fn install(&mut self, obtained: Obtained) -> (u64, Instant, Instant) {
        self.generation += 1;
        self.discarded = None;
        self.last_failed = None;
        self.renewal_abandoned = false;
        let (renew_at, send_by) = self
            .timings
            .schedule(obtained.obtained_at, obtained.lifetime);
        self.current = Some(Current {
            generation: self.generation,
            header: obtained.header,
            obtained_at: obtained.obtained_at,
            renew_at,
            send_by,
            shared: obtained.shared,
            deadlines: timer::Deadlines::default(),
        });
        (self.generation, renew_at, send_by)
    }

    /// Makes a token the fleet shares current outside any login, so that processes that each
    /// logged in while the store was down converge on one token. Not while a login is in flight
    /// (its outcome decides), and not over the token it already is.
    pub(crate) fn adopt(&mut self, obtained: Obtained) -> Option<(u64, Instant, Instant)> {
        let same = self
            .current
            .as_ref()
            .is_some_and(|current| current.header == obtained.header);
        (!same && !self.api_key && self.running().is_none()).then(|| self.install(obtained))
    }

    /// Login `id` was dropped unfinished (its task, future or runtime went). The next request
    /// starts another; `true` if it was a renewal, whose token is due again at once.
    pub(crate) fn abandoned(&mut self, id: u64) -> bool {
        let Login::Running {
            id: running,
            reason,
            after,
        } = &self.login
        else {
            return false;
        };
        if *running != id {
            return false;
        }
        let renewal = *reason == Reason::Renewal;
        self.login = after.clone().map_or(Login::Idle, Login::Failed);
        self.renewal_abandoned |= renewal;
        renewal
    }

    /// Whether the request path must report answers ([`Core::answered`]): only while some rule
    /// is waiting for evidence that a token or an endpoint is good.
    pub(crate) fn wants_answers(&self) -> bool {
        self.streak != 0
            || !self.refused.is_empty()
            || self.cooldown.as_ref().is_some_and(|cooldown| {
                Some(cooldown.generation) == self.current.as_ref().map(|c| c.generation)
            })
    }

    /// A request with token `generation` had an answer other than 401 from `endpoint` at `now`:
    /// evidence that the token is good and that `endpoint` does not refuse. `checkable`: it was
    /// a `GET` answered with a 2xx, which can check the token again.
    pub(crate) fn answered(
        &mut self,
        now: Instant,
        generation: u64,
        endpoint: Endpoint,
        checkable: bool,
    ) {
        self.streak = 0;
        self.refused.remove(&endpoint);
        self.cooldown = self.cooldown.take().filter(|c| now < c.until);
        if let Some(cooldown) = self
            .cooldown
            .as_mut()
            .filter(|c| c.generation == generation)
        {
            cooldown.proven = true;
            cooldown.kept_last = false;
            if cooldown.answered.len() < MAX_ENDPOINTS {
                let place = (endpoint.origin.clone(), endpoint.path.clone());
                cooldown.answered.insert(place);
            }
            let known = cooldown.probes.contains_key(&endpoint.origin);
            if checkable && (known || cooldown.probes.len() < MAX_ENDPOINTS) {
                cooldown.probes.insert(endpoint.origin.clone(), endpoint);
            }
        }
    }

    /// The request to `endpoint` replayed with token `generation` after a 401 was answered at
    /// `now` with `status`: refused again (a 401) or not. Returns whether to replay it once
    /// more.
    ///
    /// A refusal of a token this process logged in for shows the endpoint refuses fresh tokens.
    /// One of a token taken from the store shows nothing (the store may hold a token revoked
    /// since): that token is to be judged as any refused token, and the request replayed again.
    pub(crate) fn replayed(
        &mut self,
        now: Instant,
        generation: u64,
        endpoint: Endpoint,
        status: StatusCode,
    ) -> bool {
        if status != StatusCode::UNAUTHORIZED {
            let checkable = status.is_success() && endpoint.method == Method::GET;
            self.answered(now, generation, endpoint, checkable);
            return false;
        }
        let shared = self
            .current
            .as_ref()
            .is_some_and(|c| c.generation == generation && c.shared);
        if shared {
            return true;
        }
        self.streak = self.streak.saturating_add(1).min(16);
        if self.refused.len() >= MAX_ENDPOINTS {
            self.refused.retain(|_, refused| refused.until > now);
            if self.refused.len() >= MAX_ENDPOINTS {
                self.refused.clear(); // the streak still guards against a login storm
            }
        }
        let refused = self.refused.entry(endpoint).or_insert(Refused {
            until: now,
            times: 0,
        });
        refused.times = refused.times.saturating_add(1);
        refused.until = now + refusal_grace(refused.times);
        false
    }

    /// The API answered 401 at `now` to a request to `endpoint` that carried token
    /// `generation`, with `verdict` read from its `WWW-Authenticate`. The whole 401 rule:
    ///
    /// 1. A `Bearer` error other than `invalid_token` (`insufficient_scope`, ...): the API
    ///    refuses the request, not the token. Refused.
    /// 2. An API key: nothing to renew. Refused.
    /// 3. An endpoint that refused a fresh token within its grace (1, 2, 4, ... s, at most
    ///    5 min): kept.
    /// 4. A token already replaced: wait for the next one and replay.
    /// 5. After the second endpoint in a row refused a fresh token (the streak), a token
    ///    obtained less than the streak's grace ago: kept.
    /// 6. Within 10 s of a login a 401 caused, once its token has answered anything but 401: a
    ///    bare 401 from a path that has not answered that token is settled by a check of the
    ///    token (a `GET` that answered it with a 2xx on the 401's origin, at most once a second)
    ///    when there is one;
    ///    without one it is kept, unless the answer before it was such a 401 too. A 401 from a
    ///    path that has answered, or a second in a row, is a revocation.
    /// 7. Otherwise the token is discarded, and requests wait for the next login and replay.
    pub(crate) fn unauthorized(
        &mut self,
        now: Instant,
        generation: u64,
        endpoint: &Endpoint,
        verdict: Verdict,
    ) -> Unauthorized {
        if verdict == Verdict::RequestRefused || self.api_key {
            return Unauthorized::Refused;
        }
        if self
            .refused
            .get(endpoint)
            .is_some_and(|refused| now < refused.until)
        {
            return Unauthorized::Keep;
        }
        let Some(current) = self.current.as_ref().filter(|c| c.generation == generation) else {
            return Unauthorized::Renew { discard: false };
        };
        let grace = refusal_grace(self.streak.saturating_sub(1));
        if now < current.obtained_at + grace {
            return Unauthorized::Keep;
        }
        if let Some(cooldown) = &mut self.cooldown {
            let cooling = cooldown.generation == generation && cooldown.proven;
            if cooling
                && verdict == Verdict::Unknown
                && now < cooldown.until
                && !cooldown.kept_last
                && !(cooldown.answered).contains(&(endpoint.origin.clone(), endpoint.path.clone()))
            {
                if let Some(probe) = cooldown.probes.get(&endpoint.origin) {
                    return Unauthorized::Check(probe.clone());
                }
                cooldown.kept_last = true;
                return Unauthorized::Keep;
            }
        }
        let current = self.current.take().expect("matched above");
        self.discarded = Some((current.header, now));
        self.cooldown = None;
        Unauthorized::Renew { discard: true }
    }

    /// Whether a token found in the store at `now` may serve for login `start`: not the token
    /// it replaces; after a 401, one saved as the `successor` of the token refused (by a process
    /// that logged in after a 401 to it) or obtained after that 401 arrived, so never one that
    /// may have been revoked with it; for a renewal, one not itself due for renewal; for any,
    /// one that may still be sent.
    pub(crate) fn takes(
        &self,
        start: &Start,
        shared: &Obtained,
        successor: bool,
        now: Instant,
    ) -> bool {
        let (renew_at, send_by) = self.timings.schedule(shared.obtained_at, shared.lifetime);
        let until = if start.reason == Reason::Renewal {
            renew_at
        } else {
            send_by
        };
        start.replaces.as_ref() != Some(&shared.header)
            && (successor || start.refused_at.is_none_or(|at| shared.obtained_at > at))
            && now < until
    }
}

impl Start {
    /// The token this login replaces, if any.
    pub(crate) fn replaces(&self) -> Option<&HeaderValue> {
        self.replaces.as_ref()
    }
}

/// 1, 2, 4, ... seconds, at most [`MAX_REFUSAL_GRACE`].
fn refusal_grace(times: u32) -> Duration {
    match times {
        0 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 1).min(9)).min(MAX_REFUSAL_GRACE),
    }
}

#[cfg(test)]
mod tests;
