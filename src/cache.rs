//! The token cache: the current token behind an `ArcSwap`, one login at a time (retried inside
//! its deadline), the clocks that age a token, the back-off after a failed login and the rules
//! for a 401.
//!
//! The request path only reads: one `ArcSwap` load, one relaxed atomic load and one coarse
//! clock reading tell it whether the token may be sent. A token's age is kept twice: a Tokio
//! timer moves its [`Phase`] forward (fresh, renewal due, expired), which a paused test clock
//! drives too; and every request compares the coarse monotonic clock ([`Coarse`]) with the
//! token's deadlines, so a timer that did not run (its runtime dropped, idle or late) never lets
//! an expired token out. Everything that writes (a login finishing, a 401 discarding a token)
//! takes the `state` lock, which the request path never touches while a token is fresh.
//!
//! What a 401 means is decided here too: [`Refusals`] keeps what 401s have shown about the API
//! (as opposed to the token), per endpoint.

use crate::{
    clock::Coarse,
    credentials::Secret,
    error::{Error, Kind},
    layer::Config,
    login,
    service::{HttpService, ResponseBody},
};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderValue, Method};
use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, Weak,
    },
    time::Duration,
};
use tokio::{
    sync::watch,
    task::AbortHandle,
    time::{sleep_until, timeout_at, Instant},
};
use tower::{
    util::rng::{HasherRng, Rng},
    ServiceExt,
};

/// The outcome of one login, shared with every request that waited on it.
type Outcome = Option<Result<Arc<Token>, Error>>;

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
/// How many logins a waiter starts itself when the ones it waited on died with their runtime.
const MAX_ABANDONED: usize = 3;

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
    fn as_str(self) -> &'static str {
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
    obtained_at: Instant,
    /// When it expires; `None` for an API key.
    expires_at: Option<Instant>,
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

    #[inline]
    fn timer_phase(&self) -> Phase {
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

    fn expire(&self) {
        self.phase.store(Phase::Expired as u8, Ordering::Release);
    }

    fn usable(&self) -> bool {
        self.phase() != Phase::Expired
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

/// The token cache shared by every service an [`AuthLayer`](crate::AuthLayer) makes.
pub(crate) struct Cache {
    pub(crate) config: Config,
    /// The token requests carry; `None` before the first login and after a 401 discarded it.
    current: ArcSwapOption<Token>,
    state: Mutex<State>,
    refusals: Refusals,
    /// The most requests that waited on one login, counted when it answered.
    most_waiting: AtomicUsize,
}

/// Where logins are, behind the cache's lock.
#[derive(Default)]
struct State {
    flight: Flight,
    /// Generation of the last token issued.
    generation: u64,
    /// Logins started so far.
    logins: u64,
}

/// The login side of the cache: one of three, never two at once.
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

#[derive(Clone)]
struct Failure {
    error: Error,
    /// No attempt before this.
    retry_at: Instant,
    /// Failed attempts in a row.
    attempts: u32,
}

/// What a request that needs a token does next.
enum Next {
    /// Send with this token.
    Ready(Arc<Token>),
    /// Wait for the login in flight.
    Wait(watch::Receiver<Outcome>),
    /// Fail: no login can succeed now (rejected credentials in their back-off, a `Retry-After`
    /// beyond the login timeout, a configuration error).
    Failed(Error),
}

impl State {
    /// The login in flight. One whose task ended without an answer (its runtime shut down) does
    /// not count: waiting on it would fail at once, forever.
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
}

impl Cache {
    pub(crate) fn new(mut config: Config) -> Arc<Cache> {
        let current = match &config.credentials.secret {
            Secret::Login { .. } => None,
            // An API key is the token: in place from the start, never aged, never renewed.
            Secret::ApiKey(key) => match api_key_header(key) {
                Some(header) => Some(Arc::new(Token {
                    header,
                    generation: 0,
                    phase: AtomicU8::new(Phase::Fresh as u8),
                    obtained_at: Instant::now(),
                    expires_at: None,
                    renew_by: Coarse::NEVER,
                    send_by: Coarse::NEVER,
                    timer: OnceLock::new(),
                })),
                None => {
                    config.scope = Err(Error::config(
                        "the API key is not a valid header value (empty, or with control \
                         characters); check the key",
                    ));
                    None
                }
            },
        };
        Arc::new(Cache {
            config,
            current: ArcSwapOption::new(current),
            state: Mutex::new(State::default()),
            refusals: Refusals::default(),
            most_waiting: AtomicUsize::new(0),
        })
    }

    /// Whether the credentials are an API key: a token with no login behind it.
    fn is_api_key(&self) -> bool {
        matches!(self.config.credentials.secret, Secret::ApiKey(_))
    }

    /// What is known of the token, without the token.
    pub(crate) fn state(&self) -> TokenState {
        let state = self.lock();
        let current = self.current.load_full();
        let api_key = self.is_api_key();
        TokenState {
            obtained_at: current
                .as_ref()
                .filter(|_| !api_key)
                .map(|token| token.obtained_at.into_std()),
            expires_at: current
                .as_ref()
                .and_then(|token| token.expires_at)
                .map(Instant::into_std),
            usable: current.is_some_and(|token| token.usable()),
            logins: state.logins,
            most_waiting: self.most_waiting.load(Ordering::Relaxed),
            last_error: state.failure().map(|failure| failure.error.clone()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or user code, so a poisoned lock only means a
        // panic elsewhere; the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A token that may be sent: the current one, or the outcome of the login in flight, or of
    /// a new login. Fails at once only when no login can succeed now (see [`Next::Failed`]).
    ///
    /// A waiter whose login died with its runtime starts one itself, on its own runtime.
    pub(crate) fn token<S, B, RB>(
        self: &Arc<Self>,
        inner: &S,
    ) -> impl Future<Output = Result<Arc<Token>, Error>> + Send + 'static
    where
        S: HttpService<B, RB>,
        B: From<Bytes> + Send + 'static,
        RB: ResponseBody,
    {
        let (cache, inner) = (self.clone(), inner.clone());
        async move {
            for _ in 0..=MAX_ABANDONED {
                match cache.next(&inner) {
                    Next::Ready(token) => return Ok(token),
                    Next::Failed(error) => return Err(error),
                    Next::Wait(inflight) => match wait(inflight).await {
                        Err(error) if error.is_abandoned() => continue,
                        outcome => return outcome,
                    },
                }
            }
            Err(Error::new(Kind::Abandoned))
        }
    }

    /// What a request that needs a token does next; starts a login if it must.
    fn next<S, B, RB>(self: &Arc<Self>, inner: &S) -> Next
    where
        S: HttpService<B, RB>,
        B: From<Bytes> + Send + 'static,
        RB: ResponseBody,
    {
        let mut state = self.lock();
        if let Some(token) = self.current.load_full() {
            if token.usable() {
                return Next::Ready(token);
            }
        }
        if let Some(inflight) = state.live_inflight() {
            return Next::Wait(inflight);
        }
        if let Some(error) = state.fail_fast(self.config.login_timeout) {
            return Next::Failed(error);
        }
        let reason = if state.logins == 0 {
            Reason::FirstUse
        } else {
            Reason::Expired
        };
        match self.start_login(&mut state, inner.clone(), reason) {
            Ok(inflight) => Next::Wait(inflight),
            Err(error) => Next::Failed(error),
        }
    }

    /// Starts a background renewal for a token in its refresh window. Called by the one request
    /// that moved the token from `Due` to `Renewing`.
    #[cold]
    #[inline(never)]
    pub(crate) fn renew<S, B, RB>(self: &Arc<Self>, token: &Arc<Token>, inner: &S)
    where
        S: HttpService<B, RB>,
        B: From<Bytes> + Send + 'static,
        RB: ResponseBody,
    {
        let mut state = self.lock();
        if state.live_inflight().is_some() {
            return; // whatever is in flight replaces the token
        }
        if let Some(failure) = state.failure().filter(|f| Instant::now() < f.retry_at) {
            retry_renewal_at(token, failure.retry_at);
            return;
        }
        if let Err(error) = self.start_login(&mut state, inner.clone(), Reason::Renewal) {
            // No runtime to log in on: try again later, from a request that has one.
            tracing::warn!(target: "patchworks_auth", %error, "background renewal not started");
            token.advance(Phase::Renewing, Phase::Due);
        }
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

    /// Handles a 401 without a `Bearer` error other than `invalid_token`, to a request to
    /// `endpoint` that carried token `generation`: discards that token if it is still the
    /// current one and starts the login that replaces it, unless [`Refusals`] say the 401 is the
    /// API's answer.
    pub(crate) fn unauthorized<S, B, RB>(
        self: &Arc<Self>,
        generation: u64,
        endpoint: &Endpoint,
        inner: &S,
    ) -> Result<Unauthorized, Error>
    where
        S: HttpService<B, RB>,
        B: From<Bytes> + Send + 'static,
        RB: ResponseBody,
    {
        if self.is_api_key() {
            return Ok(Unauthorized::Keep); // nothing to renew: the API refuses the key
        }
        if self.refusals.endpoint_refuses(endpoint) {
            tracing::debug!(
                target: "patchworks_auth",
                method = %endpoint.method,
                path = %endpoint.path,
                "401 from an endpoint that refused a fresh token: returned as is"
            );
            return Ok(Unauthorized::Keep);
        }
        let mut state = self.lock();
        let current = self.current.load_full();
        let Some(token) = current.filter(|token| token.generation == generation) else {
            // Already discarded or replaced by another request's 401 or a renewal.
            return Ok(Unauthorized::Renew);
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
            return Ok(Unauthorized::Keep);
        }
        // Under the lock every writer of `current` is serialized; the comparison still makes
        // "discard only if it is still the current token" explicit.
        self.current.compare_and_swap(&Some(token), None);
        tracing::info!(
            target: "patchworks_auth",
            generation,
            "API answered 401: token discarded, logging in again"
        );
        if state.live_inflight().is_none() {
            if let Some(error) = state.fail_fast(self.config.login_timeout) {
                return Err(error);
            }
            self.start_login(&mut state, inner.clone(), Reason::Unauthorized)?;
        }
        Ok(Unauthorized::Renew)
    }

    /// Spawns a login on the current Tokio runtime; it runs to its end even if every request
    /// waiting on it is dropped.
    fn start_login<S, B, RB>(
        self: &Arc<Self>,
        state: &mut State,
        inner: S,
        reason: Reason,
    ) -> Result<watch::Receiver<Outcome>, Error>
    where
        S: HttpService<B, RB>,
        B: From<Bytes> + Send + 'static,
        RB: ResponseBody,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config("a login needs a Tokio runtime; call the service from within one")
        })?;
        let (tx, rx) = watch::channel(None);
        let after = state.failure().cloned();
        state.flight = Flight::LoggingIn {
            outcome: rx.clone(),
            after: after.clone(),
        };
        state.logins += 1;
        tracing::debug!(target: "patchworks_auth", reason = reason.as_str(), "login started");
        let cache = self.clone();
        let span = tracing::info_span!(
            target: "patchworks_auth",
            "patchworks_login",
            reason = reason.as_str(),
            login_host = self.config.login_url.host().unwrap_or_default(),
        );
        runtime.spawn(tracing::Instrument::instrument(
            async move {
                let outcome = cache.login(inner, after).await;
                let outcome = cache.finish(outcome, reason);
                // Every request waiting holds a receiver (the cache's own was dropped by
                // `finish`): counted here, once per login, rather than by each request.
                cache
                    .most_waiting
                    .fetch_max(tx.receiver_count(), Ordering::Relaxed);
                // Nobody waiting is fine: the token is in the cache for the next request.
                let _ = tx.send(Some(outcome));
            },
            span,
        ));
        Ok(rx)
    }

    /// One login: attempts through the wrapped service until one succeeds, one fails in a way
    /// that needs a fix, or the login timeout runs out.
    ///
    /// A transient failure (5xx, 429, no connection, an attempt taking a third of the login
    /// timeout) is tried again after a jittered back-off, or after the `Retry-After` the
    /// endpoint asked for; the first attempt waits out the back-off of the failure before it.
    /// Returns the issued token and when its request was sent, or the failure to remember.
    async fn login<S, B, RB>(
        &self,
        inner: S,
        after: Option<Failure>,
    ) -> Result<(login::Issued, Instant), Failure>
    where
        S: HttpService<B, RB>,
        B: From<Bytes>,
        RB: ResponseBody,
    {
        let config = &self.config;
        let start = Instant::now();
        let deadline = start + config.login_timeout;
        let per_attempt = config.login_timeout / 3;
        let (mut attempts, mut next_at) = match after {
            Some(failure) => (failure.attempts, failure.retry_at),
            None => (0, start),
        };
        let mut last = None;
        loop {
            if next_at >= deadline {
                // The wait alone outlasts the login: fail now rather than make callers wait for
                // nothing, and let the next login start when the wait is over.
                let error = last.unwrap_or_else(|| Error::new(Kind::Timeout(config.login_timeout)));
                return Err(Failure {
                    error,
                    retry_at: next_at,
                    attempts,
                });
            }
            sleep_until(next_at).await;
            let attempt_ends = deadline.min(Instant::now() + per_attempt);
            let error = match timeout_at(attempt_ends, self.attempt(inner.clone())).await {
                Ok(Ok(issued)) => return Ok(issued),
                Ok(Err(error)) => error,
                Err(_) if attempt_ends >= deadline => {
                    Error::new(Kind::Timeout(config.login_timeout))
                }
                Err(_) => Error::new(Kind::Timeout(per_attempt)),
            };
            attempts = attempts.saturating_add(1);
            let wait = backoff(&error, attempts).max(error.retry_after().unwrap_or_default());
            next_at = Instant::now() + wait;
            tracing::debug!(
                target: "patchworks_auth",
                attempts,
                retry_in = ?wait,
                %error,
                "login attempt failed"
            );
            if !error.is_transient() || Instant::now() >= deadline {
                return Err(Failure {
                    error,
                    retry_at: next_at,
                    attempts,
                });
            }
            last = Some(error);
        }
    }

    /// One attempt: the login request through the wrapped service, and its answer.
    async fn attempt<S, B, RB>(&self, mut inner: S) -> Result<(login::Issued, Instant), Error>
    where
        S: HttpService<B, RB>,
        B: From<Bytes>,
        RB: ResponseBody,
    {
        let config = &self.config;
        let Secret::Login { email, password } = &config.credentials.secret else {
            return Err(Error::config("an API key needs no login"));
        };
        let transport = |err: S::Error| Error::with_source(Kind::Transport, err);
        let inner = inner.ready().await.map_err(transport)?;
        let request = login::request(&config.login_url, email, password);
        let sent_at = Instant::now();
        let response = inner.call(request).await.map_err(transport)?;
        Ok((
            login::read_answer(&config.login_url, response).await?,
            sent_at,
        ))
    }

    /// Stores a login's outcome: the new token, or the failure and its back-off.
    fn finish(
        self: &Arc<Self>,
        outcome: Result<(login::Issued, Instant), Failure>,
        reason: Reason,
    ) -> Result<Arc<Token>, Error> {
        let mut state = self.lock();
        match outcome {
            Ok((issued, sent_at)) => {
                state.flight = Flight::Idle;
                state.generation += 1;
                let (renew_at, expire_at) = self.schedule(sent_at, issued.lifetime);
                let (now, coarse) = (Instant::now(), Coarse::now());
                let token = Arc::new(Token {
                    header: issued.header,
                    generation: state.generation,
                    phase: AtomicU8::new(Phase::Fresh as u8),
                    obtained_at: sent_at,
                    expires_at: Some(sent_at + issued.lifetime),
                    renew_by: coarse.after(renew_at.saturating_duration_since(now)),
                    send_by: coarse.after(expire_at.saturating_duration_since(now)),
                    timer: OnceLock::new(),
                });
                let timer = tokio::spawn(age(Arc::downgrade(&token), renew_at, expire_at));
                let _ = token.timer.set(timer.abort_handle());
                self.current.store(Some(token.clone()));
                tracing::info!(
                    target: "patchworks_auth",
                    reason = reason.as_str(),
                    generation = token.generation,
                    lifetime = ?issued.lifetime,
                    took = ?sent_at.elapsed(),
                    "logged in to Patchworks"
                );
                Ok(token)
            }
            Err(failure) => {
                tracing::warn!(
                    target: "patchworks_auth",
                    reason = reason.as_str(),
                    attempts = failure.attempts,
                    retry_in = ?failure.retry_at.saturating_duration_since(Instant::now()),
                    error = %failure.error,
                    "Patchworks login failed"
                );
                if let Some(token) = self.current.load_full() {
                    // A failed background renewal: the token stays in use until it expires, and
                    // renewal is tried again after the back-off.
                    retry_renewal_at(&token, failure.retry_at);
                }
                let error = failure.error.clone();
                state.flight = Flight::Failed(failure);
                Err(error)
            }
        }
    }

    /// When a token obtained at `sent_at` living `lifetime` is renewed, and when it stops being
    /// sent.
    ///
    /// Renewal starts `refresh_before` ahead of expiry, but never earlier than half-way through
    /// the lifetime, so a short-lived token is not renewed on every request. A token stops being
    /// sent a tenth of its lifetime (at most 5 s) before it expires, to cover the clock's
    /// resolution and the request's time in flight.
    fn schedule(&self, sent_at: Instant, lifetime: Duration) -> (Instant, Instant) {
        let margin = (lifetime / 10).min(Duration::from_secs(5));
        let window = self.config.refresh_before.min(lifetime / 2);
        (sent_at + (lifetime - window), sent_at + (lifetime - margin))
    }
}

/// The current token of a cache, for [`arc_swap::Cache`]: each service keeps its own handle, so
/// that a request with a fresh token reads one pointer instead of doing a full `ArcSwap` load.
#[derive(Clone)]
pub(crate) struct Current(pub(crate) Arc<Cache>);

impl std::ops::Deref for Current {
    type Target = ArcSwapOption<Token>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.config)
            .field("token", &self.current.load())
            .finish()
    }
}

/// Waits for the outcome of a login in flight.
async fn wait(mut inflight: watch::Receiver<Outcome>) -> Result<Arc<Token>, Error> {
    match inflight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(Error::new(Kind::Abandoned))),
        // The login task was dropped: its runtime shut down.
        Err(_) => Err(Error::new(Kind::Abandoned)),
    }
}

/// The wait before the next attempt after `attempts` failures in a row ending with `error`,
/// with up to half again as jitter, so that a fleet restarted together does not log in in
/// lockstep. Never shorter than the back-off itself.
fn backoff(error: &Error, attempts: u32) -> Duration {
    let (first, max) = if error.is_transient() {
        TRANSIENT_BACKOFF
    } else {
        REJECTED_BACKOFF
    };
    let base = first
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(max);
    base.mul_f64(1.0 + 0.5 * HasherRng::default().next_f64())
}

/// Moves a token whose renewal failed back to `Due` once the back-off ends.
fn retry_renewal_at(token: &Arc<Token>, at: Instant) {
    if token.timer_phase() != Phase::Renewing {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime to keep time on: let the next request try again.
        token.advance(Phase::Renewing, Phase::Due);
        return;
    };
    let token = Arc::downgrade(token);
    runtime.spawn(async move {
        sleep_until(at).await;
        if let Some(token) = token.upgrade() {
            token.advance(Phase::Renewing, Phase::Due);
        }
    });
}

/// Ages a token on Tokio's clock: due for renewal at `renew_at`, expired at `expire_at`.
///
/// If the task is dropped before that (its runtime shut down while the token lives on, say in a
/// client shared between runtimes), the token is aged by the coarse clock alone: it stays usable
/// for as long as it is valid.
async fn age(token: Weak<Token>, renew_at: Instant, expire_at: Instant) {
    if renew_at < expire_at {
        sleep_until(renew_at).await;
        match token.upgrade() {
            Some(token) => token.advance(Phase::Fresh, Phase::Due),
            None => return,
        };
    }
    sleep_until(expire_at).await;
    if let Some(token) = token.upgrade() {
        token.expire();
    }
}

/// An API key as a sensitive header value, if it is one.
fn api_key_header(key: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(key)
        .ok()
        .filter(|_| !key.trim().is_empty())?;
    value.set_sensitive(true);
    Some(value)
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
    /// Logins started so far, successful or not.
    pub logins: u64,
    /// The most requests that waited on one login, counted when it answered.
    pub most_waiting: usize,
    /// The last login's error, until a login succeeds.
    pub last_error: Option<Error>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
