//! The token core: the current token, the login in flight, the back-off after a failed login and
//! the rules for a 401, as a state machine that decides and does no I/O.
//!
//! It knows nothing of services, bodies or stores. Whoever drives it (see [`crate::cache`]) asks
//! what a request does next ([`Core::next`]); when the answer is to log in, the core hands out a
//! [`Ticket`] for that one login and every other request waits on it, until the ticket comes
//! back with a token or a failure ([`Core::finish`]). A ticket dropped unfinished (its task died
//! with its runtime) counts as a login nobody is running: the next request starts another.
//!
//! The request path only reads: one `ArcSwap` load, one relaxed atomic load and one coarse
//! clock reading tell it whether the token may be sent. A token's age is kept twice: a Tokio
//! timer (the driver's) moves its [`Phase`] forward (fresh, renewal due, expired), which a paused
//! test clock drives too; and every request compares the coarse monotonic clock ([`Coarse`])
//! with the token's deadlines, so a timer that did not run (its runtime dropped, idle or late)
//! never lets an expired token out. Everything that writes (a login finishing, a 401 discarding a
//! token) takes the `state` lock, which the request path never touches while a token is fresh.
//!
//! What a 401 means is decided here too: [`Refusals`] keeps what 401s have shown about the API
//! (as opposed to the token), per endpoint.

use crate::{clock::Coarse, error::Error};
use arc_swap::ArcSwapOption;
use http::{HeaderValue, Method};
use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::Duration,
};
use tokio::{sync::watch, task::AbortHandle, time::Instant};
use tower::util::rng::{HasherRng, Rng};

/// The outcome of one login, shared with every request that waited on it.
pub(crate) type Outcome = Option<Result<Arc<Token>, Error>>;

/// Back-off after a login the endpoint refused or could not answer usefully: 5 s doubling to
/// 5 min, so that rejected credentials cost the account a handful of attempts an hour.
const REJECTED_BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));
/// Back-off between the attempts of one login after a failure that goes away by itself (5xx,
/// 429, an attempt timing out, no connection): 250 ms doubling to 2 s, so a login recovers
/// within 2 to 3 s of the endpoint coming back.
const TRANSIENT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(2));
/// The longest 401s are taken as the API's answer before the layer tries a new token again.
const MAX_REFUSAL_GRACE: Duration = Duration::from_secs(300);
/// The most endpoints whose refusals are remembered at once.
const MAX_REFUSED_ENDPOINTS: usize = 1024;

/// Where a token is in its life. Only ever moves forward, but for `Renewing` going back to
/// `Due` when a background renewal failed and may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Sent as it is.
    Fresh = 0,
    /// Still sent, and the first request to see this starts a background renewal.
    Due = 1,
    /// Still sent while the background renewal runs.
    Renewing = 2,
    /// Never sent again: requests wait for a new login.
    Expired = 3,
}

/// Why a login runs; said in its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No token yet.
    FirstUse,
    /// The token expired (or was never renewed in time).
    Expired,
    /// The token entered its refresh window; it stays in use meanwhile.
    Renewal,
    /// The API answered 401 to the token.
    Unauthorized,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::FirstUse => "first use",
            Reason::Expired => "token expired",
            Reason::Renewal => "background renewal",
            Reason::Unauthorized => "API answered 401",
        }
    }
}

/// One issued token, as the request path sees it.
pub(crate) struct Token {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// Tells this token from the ones before and after it, so that a 401 discards only the
    /// token the request carried.
    pub(crate) generation: u64,
    phase: AtomicU8,
    /// When the login request that obtained it was sent.
    pub(crate) obtained_at: Instant,
    /// When it expires; `None` for an API key.
    pub(crate) expires_at: Option<Instant>,
    /// On the coarse clock: when its renewal is due (the request path's one comparison) and
    /// when it stops being sent.
    renew_by: Coarse,
    send_by: Coarse,
    /// The timer task that ages this token; aborted when the token is dropped.
    timer: OnceLock<AbortHandle>,
}

impl Token {
    /// The token's phase, caught up with the coarse clock if its timer is late.
    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        if Coarse::now() >= self.renew_by {
            self.catch_up();
        }
        self.timer_phase()
    }

    /// The phase its timer (or an earlier request) set, without reading the clock.
    #[inline]
    pub(crate) fn timer_phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Fresh,
            1 => Phase::Due,
            2 => Phase::Renewing,
            _ => Phase::Expired,
        }
    }

    /// The timer did not run (yet) but the clock says the token is due or expired.
    #[cold]
    #[inline(never)]
    fn catch_up(&self) {
        if Coarse::now() >= self.send_by {
            if self.timer_phase() != Phase::Expired {
                self.expire();
            }
        } else if self.timer_phase() == Phase::Fresh {
            // Loaded first: in the renewal window every request comes here, and a failed
            // compare-exchange still takes the cache line.
            self.advance(Phase::Fresh, Phase::Due);
        }
    }

    /// Moves from `from` to `to` if the token is still in `from`; `true` for the one caller
    /// that made the move.
    pub(crate) fn advance(&self, from: Phase, to: Phase) -> bool {
        self.phase
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn expire(&self) {
        self.phase.store(Phase::Expired as u8, Ordering::Release);
    }

    pub(crate) fn usable(&self) -> bool {
        self.phase() != Phase::Expired
    }

    /// How long it lives from when it was obtained; `None` for an API key.
    pub(crate) fn lifetime(&self) -> Option<Duration> {
        self.expires_at.map(|at| at - self.obtained_at)
    }

    /// Puts the token in the headers of a request that got 401 with the token before, to send
    /// it again.
    pub(crate) fn authorize_replay(&self, headers: &mut http::HeaderMap) {
        tracing::debug!(
            target: "patchworks_auth",
            generation = self.generation,
            "replaying the request that got 401 with the new token"
        );
        headers.insert(http::header::AUTHORIZATION, self.header.clone());
    }

    /// A copy of the header whose bytes are its own, for one service's requests: their clones
    /// bump a reference count that no other service's requests touch. Shared once here, so that
    /// its clones allocate nothing.
    pub(crate) fn private_header(&self) -> HeaderValue {
        let Ok(mut header) = HeaderValue::from_bytes(self.header.as_bytes()) else {
            // Not seen: the bytes of a header value make a header value.
            return self.header.clone();
        };
        header.set_sensitive(true);
        drop(header.clone());
        header
    }

    /// Hands the token the task that ages it, aborted when the token is dropped.
    pub(crate) fn set_timer(&self, timer: AbortHandle) {
        let _ = self.timer.set(timer);
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.get() {
            timer.abort();
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("header", &"<redacted>")
            .field("generation", &self.generation)
            .field("phase", &self.timer_phase())
            .finish()
    }
}

/// What a 401 on a token leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unauthorized {
    /// The token was discarded (now, or by an earlier 401): wait for the next one and replay.
    Renew,
    /// The token is kept and the 401 returned as it is: it is the API's answer to the request
    /// (a missing permission), not a sign of a bad token.
    Keep,
}

/// A method and path (no query): what a 401's evidence applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) method: Method,
    pub(crate) path: String,
}

/// What 401s have shown about the API, as opposed to the token.
///
/// A 401 without a `Bearer` error may be the token's fault (revoked, expired early) or the
/// request's (a missing permission). The layer first blames the token: it logs in again and
/// replays. If the replay with a fresh token is refused too, the 401 was the API's answer, and
/// that is remembered two ways:
/// - for that method and path: its 401s are returned as they are for 1, 2, 4, ... s (at most
///   5 min), so an endpoint the account may not use costs a login now and then, not one per
///   request; any other answer from it forgets this;
/// - for the whole API, as a streak of such replays with no other answer to any request in
///   between: from the second endpoint in a row that refused a fresh token, a 401 on a token
///   obtained less than the streak's grace ago is returned as it is, so an API that refuses
///   everything costs a login now and then, however many endpoints it is asked for. One
///   endpoint the account may not use never holds back the recovery from a revocation; any
///   answer but 401 to any request clears the streak, and a revocation after that is believed
///   at once.
#[derive(Default)]
struct Refusals {
    streak: AtomicU32,
    /// Whether `endpoints` has entries: lets the request path skip its lock.
    any: AtomicBool,
    endpoints: Mutex<HashMap<Endpoint, Refused>>,
}

struct Refused {
    until: Instant,
    times: u32,
}

/// 1, 2, 4, ... seconds, at most [`MAX_REFUSAL_GRACE`].
fn refusal_grace(times: u32) -> Duration {
    match times {
        0 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 1).min(9)).min(MAX_REFUSAL_GRACE),
    }
}

impl Refusals {
    fn endpoints(&self) -> MutexGuard<'_, HashMap<Endpoint, Refused>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn endpoint_refuses(&self, endpoint: &Endpoint) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .endpoints()
                .get(endpoint)
                .is_some_and(|refused| Instant::now() < refused.until)
    }

    /// A token got an answer other than 401 from `endpoint` (made only if it is needed).
    #[inline]
    fn answered(&self, endpoint: impl FnOnce() -> Endpoint) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
        if self.any.load(Ordering::Relaxed) {
            self.forget(endpoint());
        }
    }

    #[cold]
    #[inline(never)]
    fn forget(&self, endpoint: Endpoint) {
        let mut endpoints = self.endpoints();
        endpoints.remove(&endpoint);
        self.any.store(!endpoints.is_empty(), Ordering::Relaxed);
    }

    /// A request replayed with a fresh token after a 401 was refused again.
    fn refused(&self, endpoint: Endpoint) {
        let _ = self
            .streak
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |streak| {
                Some(streak.saturating_add(1).min(16))
            });
        let now = Instant::now();
        let mut endpoints = self.endpoints();
        if endpoints.len() >= MAX_REFUSED_ENDPOINTS {
            endpoints.retain(|_, refused| refused.until > now);
            if endpoints.len() >= MAX_REFUSED_ENDPOINTS {
                endpoints.clear(); // the streak still guards against a login storm
            }
        }
        let refused = endpoints.entry(endpoint).or_insert(Refused {
            until: now,
            times: 0,
        });
        refused.times = refused.times.saturating_add(1);
        refused.until = now + refusal_grace(refused.times);
        self.any.store(true, Ordering::Relaxed);
    }

    /// How long after a login 401s on the new token are taken as the API's answer: nothing
    /// until two endpoints in a row refused a fresh token, then 1, 2, 4, ... s.
    fn grace(&self) -> Duration {
        refusal_grace(self.streak.load(Ordering::Relaxed).saturating_sub(1))
    }
}

/// The timings a core ages tokens and fails fast by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    /// How long before its expiry a token is renewed (capped at half its lifetime).
    pub(crate) refresh_before: Duration,
    /// The longest one login may take.
    pub(crate) login_timeout: Duration,
}

impl Timings {
    /// When a token obtained at `obtained_at` living `lifetime` is renewed, and when it stops
    /// being sent.
    ///
    /// Renewal starts `refresh_before` ahead of expiry, but never earlier than half-way through
    /// the lifetime, so a short-lived token is not renewed on every request. A token stops being
    /// sent a tenth of its lifetime (at most 5 s) before it expires, to cover the clock's
    /// resolution and the request's time in flight.
    pub(crate) fn schedule(&self, obtained_at: Instant, lifetime: Duration) -> (Instant, Instant) {
        let margin = (lifetime / 10).min(Duration::from_secs(5));
        let window = self.refresh_before.min(lifetime / 2);
        (
            obtained_at + (lifetime - window),
            obtained_at + (lifetime - margin),
        )
    }
}

/// A token a login (or a shared store) gave, before the core makes it current.
#[derive(Clone)]
pub(crate) struct Obtained {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// When the login request that obtained it was sent.
    pub(crate) obtained_at: Instant,
    /// How long it lives from `obtained_at`.
    pub(crate) lifetime: Duration,
    /// Whether it came from a shared store rather than a login of this process.
    pub(crate) shared: bool,
}

impl fmt::Debug for Obtained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Obtained")
            .field("header", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .field("shared", &self.shared)
            .finish()
    }
}

/// A failed login, remembered for the back-off.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    /// No attempt before this.
    pub(crate) retry_at: Instant,
    /// Failed attempts in a row.
    pub(crate) attempts: u32,
}

/// Where logins are, behind the core's lock.
#[derive(Default)]
struct State {
    flight: Flight,
    /// Generation of the last token made current.
    generation: u64,
    /// The last token a 401 discarded, until another is current: a login after it must not
    /// take it back from a shared store.
    discarded: Option<Arc<Token>>,
}

/// The login side of the core: one of three, never two at once.
#[derive(Default)]
enum Flight {
    /// No login in flight, and the last one (if any) succeeded.
    #[default]
    Idle,
    /// A login in flight: every request that needs a token waits on it.
    LoggingIn {
        outcome: watch::Receiver<Outcome>,
        /// The failure it follows, if any: kept for `TokenState` and the back-off.
        after: Option<Failure>,
    },
    /// The last login failed.
    Failed(Failure),
}

/// The right to run the one login in flight, and to report its outcome with [`Core::finish`].
/// Dropped unfinished, its waiters are told the login was abandoned.
pub(crate) struct Ticket {
    pub(crate) reason: Reason,
    /// The failure this login follows: its first attempt waits out that back-off.
    pub(crate) after: Option<Failure>,
    /// The token this login replaces (renewed, or refused with a 401), if any: a shared store
    /// holding the same one has nothing newer.
    pub(crate) stale: Option<Arc<Token>>,
    outcome: watch::Sender<Outcome>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("reason", &self.reason)
            .finish()
    }
}

/// What a request that needs a token does next.
pub(crate) enum Next {
    /// Send with this token.
    Ready(Arc<Token>),
    /// Wait for the login in flight.
    Wait(watch::Receiver<Outcome>),
    /// Run the login (and wait for it, like every other request).
    Start(Ticket, watch::Receiver<Outcome>),
    /// Fail: no login can succeed now (rejected credentials in their back-off, a `Retry-After`
    /// beyond the login timeout, a configuration error).
    Failed(Error),
}

/// What a token in its renewal window leads to.
pub(crate) enum Renewal {
    /// Run the renewal.
    Start(Ticket),
    /// A login is already in flight; it replaces the token.
    InFlight,
    /// The last login failed: try again at this time.
    Later(Instant),
}

impl State {
    /// The login in flight. One whose ticket was dropped without an answer (its runtime shut
    /// down) does not count: waiting on it would fail at once, forever.
    fn live_inflight(&self) -> Option<watch::Receiver<Outcome>> {
        match &self.flight {
            Flight::LoggingIn { outcome, .. } if outcome.has_changed().is_ok() => {
                Some(outcome.clone())
            }
            _ => None,
        }
    }

    /// The last failure, whether a login is in flight after it or not.
    fn failure(&self) -> Option<&Failure> {
        match &self.flight {
            Flight::Failed(failure) => Some(failure),
            Flight::LoggingIn { after, .. } => after.as_ref(),
            Flight::Idle => None,
        }
    }

    /// The error to fail with instead of starting a login: while a login that needs a fix
    /// backs off, or when the endpoint asked for a wait longer than a login may take.
    fn fail_fast(&self, login_timeout: Duration) -> Option<Error> {
        let Flight::Failed(failure) = &self.flight else {
            return None;
        };
        let now = Instant::now();
        let waiting = now < failure.retry_at;
        let too_long = failure.retry_at > now + login_timeout;
        (waiting && (!failure.error.is_transient() || too_long)).then(|| failure.error.clone())
    }

    /// Puts a login in flight and hands out its ticket.
    fn start(
        &mut self,
        reason: Reason,
        stale: Option<Arc<Token>>,
    ) -> (Ticket, watch::Receiver<Outcome>) {
        let (tx, rx) = watch::channel(None);
        let after = self.failure().cloned();
        self.flight = Flight::LoggingIn {
            outcome: rx.clone(),
            after: after.clone(),
        };
        let ticket = Ticket {
            reason,
            after,
            stale,
            outcome: tx,
        };
        (ticket, rx)
    }
}

/// The token core shared by every service an [`AuthLayer`](crate::AuthLayer) makes.
pub(crate) struct Core {
    timings: Timings,
    /// Whether the token is an API key: never aged, never renewed, no login behind it.
    api_key: bool,
    /// The token requests carry; `None` before the first login and after a 401 discarded it.
    current: ArcSwapOption<Token>,
    state: Mutex<State>,
    refusals: Refusals,
    /// Logins run so far (tokens taken from a shared store are not logins).
    logins: AtomicU64,
    /// The most requests that waited on one login, counted when it answered.
    most_waiting: AtomicUsize,
}

impl Core {
    /// A core that logs in for its tokens.
    pub(crate) fn new(timings: Timings) -> Self {
        Core::with(timings, None)
    }

    /// A core whose token is an API key, in place from the start.
    pub(crate) fn api_key(timings: Timings, header: HeaderValue) -> Self {
        let token = Token {
            header,
            generation: 0,
            phase: AtomicU8::new(Phase::Fresh as u8),
            obtained_at: Instant::now(),
            expires_at: None,
            renew_by: Coarse::NEVER,
            send_by: Coarse::NEVER,
            timer: OnceLock::new(),
        };
        Core::with(timings, Some(Arc::new(token)))
    }

    fn with(timings: Timings, api_key: Option<Arc<Token>>) -> Self {
        Core {
            timings,
            api_key: api_key.is_some(),
            current: ArcSwapOption::new(api_key),
            state: Mutex::new(State::default()),
            refusals: Refusals::default(),
            logins: AtomicU64::new(0),
            most_waiting: AtomicUsize::new(0),
        }
    }

    pub(crate) fn timings(&self) -> &Timings {
        &self.timings
    }

    /// The current token, for [`arc_swap::Cache`].
    pub(crate) fn current(&self) -> &ArcSwapOption<Token> {
        &self.current
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or user code, so a poisoned lock only means a
        // panic elsewhere; the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a request that needs a token does next.
    pub(crate) fn next(&self) -> Next {
        let mut state = self.lock();
        let current = self.current.load_full();
        if let Some(token) = &current {
            if token.usable() {
                return Next::Ready(token.clone());
            }
        }
        if let Some(inflight) = state.live_inflight() {
            return Next::Wait(inflight);
        }
        if let Some(error) = state.fail_fast(self.timings.login_timeout) {
            return Next::Failed(error);
        }
        let reason = if state.generation == 0 {
            Reason::FirstUse
        } else {
            Reason::Expired
        };
        let stale = current.or_else(|| state.discarded.clone());
        let (ticket, rx) = state.start(reason, stale);
        Next::Start(ticket, rx)
    }

    /// What a token in its renewal window leads to. Asked by the one request that moved the
    /// token from `Due` to `Renewing`.
    pub(crate) fn renew(&self, token: &Arc<Token>) -> Renewal {
        let mut state = self.lock();
        if state.live_inflight().is_some() {
            return Renewal::InFlight;
        }
        if let Some(failure) = state.failure().filter(|f| Instant::now() < f.retry_at) {
            return Renewal::Later(failure.retry_at);
        }
        Renewal::Start(state.start(Reason::Renewal, Some(token.clone())).0)
    }

    /// A request with a token had an answer other than 401: evidence that the token is good
    /// and, for `endpoint`, that it does not refuse.
    #[inline]
    pub(crate) fn answered(&self, endpoint: impl FnOnce() -> Endpoint) {
        self.refusals.answered(endpoint);
    }

    /// A request replayed with a new token after a 401 was answered: refused again (`true`) or
    /// not.
    pub(crate) fn replayed(&self, endpoint: Endpoint, refused: bool) {
        if refused {
            self.refusals.refused(endpoint);
        } else {
            self.refusals.answered(|| endpoint);
        }
    }

    /// A 401 without a `Bearer` error other than `invalid_token`, to a request to `endpoint`
    /// that carried token `generation`: discards that token if it is still the current one,
    /// unless [`Refusals`] say the 401 is the API's answer. Returns what the request does, and
    /// the ticket of the login that replaces the token, if one is to start.
    pub(crate) fn unauthorized(
        &self,
        generation: u64,
        endpoint: &Endpoint,
    ) -> Result<(Unauthorized, Option<Ticket>), Error> {
        if self.api_key {
            return Ok((Unauthorized::Keep, None)); // nothing to renew: the API refuses the key
        }
        if self.refusals.endpoint_refuses(endpoint) {
            tracing::debug!(
                target: "patchworks_auth",
                method = %endpoint.method,
                path = %endpoint.path,
                "401 from an endpoint that refused a fresh token: returned as is"
            );
            return Ok((Unauthorized::Keep, None));
        }
        let mut state = self.lock();
        let current = self.current.load_full();
        let Some(token) = current.filter(|token| token.generation == generation) else {
            // Already discarded or replaced by another request's 401 or a renewal.
            return Ok((Unauthorized::Renew, None));
        };
        let age = token.obtained_at.elapsed();
        let grace = self.refusals.grace();
        if age < grace {
            tracing::debug!(
                target: "patchworks_auth",
                generation,
                ?grace,
                "401 on a token obtained {age:?} ago, with only 401s since endpoints in a row \
                 refused fresh tokens: kept, 401 returned as is"
            );
            return Ok((Unauthorized::Keep, None));
        }
        // Under the lock every writer of `current` is serialized; the comparison still makes
        // "discard only if it is still the current token" explicit.
        self.current.compare_and_swap(&Some(token.clone()), None);
        state.discarded = Some(token.clone());
        tracing::info!(
            target: "patchworks_auth",
            generation,
            "API answered 401: token discarded, logging in again"
        );
        if state.live_inflight().is_some() {
            return Ok((Unauthorized::Renew, None));
        }
        if let Some(error) = state.fail_fast(self.timings.login_timeout) {
            return Err(error);
        }
        let ticket = state.start(Reason::Unauthorized, Some(token)).0;
        Ok((Unauthorized::Renew, Some(ticket)))
    }

    /// Counts a login about to run.
    pub(crate) fn count_login(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports the outcome of a ticket's login: the new token becomes current, or the failure
    /// is remembered for the back-off; every request that waited gets the outcome.
    pub(crate) fn finish(
        &self,
        ticket: Ticket,
        outcome: Result<Obtained, Failure>,
    ) -> Result<Arc<Token>, Error> {
        let mut state = self.lock();
        let result = match outcome {
            Ok(obtained) => {
                state.flight = Flight::Idle;
                Ok(self.install(&mut state, obtained))
            }
            Err(failure) => {
                let error = failure.error.clone();
                state.flight = Flight::Failed(failure);
                Err(error)
            }
        };
        drop(state);
        // Every request waiting holds a receiver (the core's own went with `Flight::LoggingIn`):
        // counted here, once per login, rather than by each request.
        self.most_waiting
            .fetch_max(ticket.outcome.receiver_count(), Ordering::Relaxed);
        // Nobody waiting is fine: the token is current for the next request.
        let _ = ticket.outcome.send(Some(result.clone()));
        result
    }

    /// Makes a token the fleet shares current outside any login, so that processes that each
    /// logged in while the store was down converge on one token. Not while a login is in flight
    /// (its outcome decides), and not over the token it already is. Returns it if it was adopted.
    pub(crate) fn adopt(&self, obtained: Obtained) -> Option<Arc<Token>> {
        let mut state = self.lock();
        if state.live_inflight().is_some() || self.api_key {
            return None;
        }
        let same = self
            .current
            .load()
            .as_ref()
            .is_some_and(|current| current.header == obtained.header);
        (!same).then(|| self.install(&mut state, obtained))
    }

    fn install(&self, state: &mut State, obtained: Obtained) -> Arc<Token> {
        state.generation += 1;
        state.discarded = None;
        let (renew_at, expire_at) = self
            .timings
            .schedule(obtained.obtained_at, obtained.lifetime);
        let (now, coarse) = (Instant::now(), Coarse::now());
        let token = Arc::new(Token {
            header: obtained.header,
            generation: state.generation,
            phase: AtomicU8::new(Phase::Fresh as u8),
            obtained_at: obtained.obtained_at,
            expires_at: Some(obtained.obtained_at + obtained.lifetime),
            renew_by: coarse.after(renew_at.saturating_duration_since(now)),
            send_by: coarse.after(expire_at.saturating_duration_since(now)),
            timer: OnceLock::new(),
        });
        self.current.store(Some(token.clone()));
        token
    }

    /// What is known of the token, without the token.
    pub(crate) fn state(&self) -> TokenState {
        let state = self.lock();
        let current = self.current.load_full();
        TokenState {
            obtained_at: current
                .as_ref()
                .filter(|_| !self.api_key)
                .map(|token| token.obtained_at.into_std()),
            expires_at: current
                .as_ref()
                .and_then(|token| token.expires_at)
                .map(Instant::into_std),
            usable: current.is_some_and(|token| token.usable()),
            logins: self.logins.load(Ordering::Relaxed),
            most_waiting: self.most_waiting.load(Ordering::Relaxed),
            last_error: state.failure().map(|failure| failure.error.clone()),
            store_outages: 0,
        }
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("token", &self.current.load())
            .finish()
    }
}

/// The wait before the next attempt after `attempts` failures in a row ending with `error`,
/// with up to half again as jitter, so that a fleet restarted together does not log in in
/// lockstep. Never shorter than the back-off itself.
pub(crate) fn backoff(error: &Error, attempts: u32) -> Duration {
    let (first, max) = if error.is_transient() {
        TRANSIENT_BACKOFF
    } else {
        REJECTED_BACKOFF
    };
    let base = first
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(max);
    jitter(base)
}

/// `base` plus up to half again, at random.
pub(crate) fn jitter(base: Duration) -> Duration {
    base.mul_f64(1.0 + 0.5 * HasherRng::default().next_f64())
}

/// What the layer knows of its token, without the token: for health checks and dashboards.
///
/// Read with [`AuthLayer::state`](crate::AuthLayer::state) or
/// [`Auth::state`](crate::Auth::state).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenState {
    /// When the login request of the current token was sent. `None` before the first login,
    /// after a 401 discarded the token, and for an API key.
    pub obtained_at: Option<std::time::Instant>,
    /// When the current token expires. `None` likewise; an API key never expires.
    pub expires_at: Option<std::time::Instant>,
    /// Whether a request now would go out with a token (or key) without waiting for a login.
    pub usable: bool,
    /// Logins this process ran so far, successful or not. A token taken from a shared
    /// [store](crate::store) is not a login.
    pub logins: u64,
    /// The most requests that waited on one login, counted when it answered.
    pub most_waiting: usize,
    /// The last login's error, until a login succeeds.
    pub last_error: Option<Error>,
    /// How many times the shared [store](crate::store) stopped answering (each outage counted
    /// once, however long it lasted). Always `0` without a store.
    pub store_outages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn backoff_grows_is_capped_and_jittered_upwards() {
        let rejected = Error::new(Kind::Rejected(http::StatusCode::UNAUTHORIZED));
        let down = Error::new(Kind::Status(http::StatusCode::BAD_GATEWAY, None));
        for (error, attempts, base) in [
            (&rejected, 1, 5.0),
            (&rejected, 2, 10.0),
            (&rejected, 3, 20.0),
            (&rejected, 7, 300.0),
            (&rejected, 100, 300.0),
            (&down, 1, 0.25),
            (&down, 2, 0.5),
            (&down, 4, 2.0),
            (&down, 100, 2.0),
        ] {
            let waits: Vec<f64> = (0..50)
                .map(|_| backoff(error, attempts).as_secs_f64())
                .collect();
            assert!(
                waits.iter().all(|w| *w >= base && *w <= base * 1.5),
                "{attempts}: {waits:?}"
            );
            assert!(
                waits.iter().any(|w| (w - waits[0]).abs() > 1e-6),
                "not jittered: {waits:?}"
            );
        }
    }

    #[test]
    fn refusal_grace_doubles_to_five_minutes() {
        let secs = |n| refusal_grace(n).as_secs();
        assert_eq!(
            [0, 1, 2, 3, 9, 10, 100].map(secs),
            [0, 1, 2, 4, 256, 300, 300]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_per_endpoint_and_any_answer_clears_the_streak() {
        let refusals = Refusals::default();
        let endpoint = |path: &str| Endpoint {
            method: Method::GET,
            path: path.to_owned(),
        };
        refusals.refused(endpoint("/admin"));
        assert!(refusals.endpoint_refuses(&endpoint("/admin")));
        assert!(!refusals.endpoint_refuses(&endpoint("/flows")));
        assert_eq!(
            refusals.grace(),
            Duration::ZERO,
            "one endpoint is no pattern"
        );
        refusals.refused(endpoint("/billing"));
        assert_eq!(refusals.grace(), Duration::from_secs(1));

        // An answer from another endpoint clears the streak, not /admin's record.
        refusals.answered(|| endpoint("/flows"));
        assert_eq!(refusals.grace(), Duration::ZERO);
        assert!(refusals.endpoint_refuses(&endpoint("/admin")));

        // /admin refused again: its grace grows; then it expires by itself.
        refusals.refused(endpoint("/admin"));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(refusals.endpoint_refuses(&endpoint("/admin")));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!refusals.endpoint_refuses(&endpoint("/admin")));

        // An answer from /admin itself forgets it at once.
        refusals.refused(endpoint("/admin"));
        refusals.answered(|| endpoint("/admin"));
        assert!(!refusals.endpoint_refuses(&endpoint("/admin")));
        assert!(
            refusals.any.load(Ordering::Relaxed),
            "/billing is still recorded"
        );
        refusals.answered(|| endpoint("/billing"));
        assert!(
            !refusals.any.load(Ordering::Relaxed),
            "nothing left to look up"
        );
    }

    #[test]
    fn the_endpoint_record_is_bounded() {
        let refusals = Refusals::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        for i in 0..(MAX_REFUSED_ENDPOINTS * 3) {
            refusals.refused(Endpoint {
                method: Method::GET,
                path: format!("/flows/{i}"),
            });
        }
        assert!(refusals.endpoints().len() <= MAX_REFUSED_ENDPOINTS);
    }
}
