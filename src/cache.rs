//! The token cache: the current token behind an `ArcSwap`, one login at a time, the timers that
//! age a token, the back-off after a failed login and the rule for a 401.
//!
//! The request path only reads: one `ArcSwap` load and one relaxed atomic load tell it whether
//! the token may be sent. It never reads a clock: a token's age is kept by a timer task that
//! moves the token's [`Phase`] forward (fresh, renewal due, expired), so that the cost of
//! `Instant::now()` is paid once per phase, not once per request. Everything that writes (a
//! login finishing, a 401 discarding a token) takes the `state` lock, which the request path
//! never touches while a token is fresh.

use crate::{
    credentials::Secret,
    error::{Error, Kind},
    layer::Config,
    login,
    service::{HttpService, ResponseBody},
};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderValue;
use std::{
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, Weak,
    },
    time::Duration,
};
use tokio::{
    sync::watch,
    task::AbortHandle,
    time::{sleep_until, Instant},
};
use tower::ServiceExt;

/// The outcome of one login, shared with every request that waited on it.
type Outcome = Option<Result<Arc<Token>, Error>>;

/// Back-off after a login the endpoint refused or could not answer usefully: 5 s doubling to
/// 5 min, so that rejected credentials cost the account a handful of attempts an hour.
const REJECTED_BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));
/// Back-off after a failure that goes away by itself (5xx, 429, timeout, no connection):
/// 250 ms doubling to 2 s, so requests recover within 2 s of the endpoint coming back.
const TRANSIENT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(2));
/// The longest a token obtained after a run of 401s is kept despite further 401s.
const MAX_UNAUTHORIZED_GRACE: Duration = Duration::from_secs(300);

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
    /// How many tokens in a row, this one included, were refused again right after a 401 made
    /// the layer log in for them: the evidence that 401s are the API's answer, not the token's.
    unauthorized_streak: AtomicU32,
    /// The timer task that ages this token; aborted when the token is dropped.
    timer: OnceLock<AbortHandle>,
}

impl Token {
    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Fresh,
            1 => Phase::Due,
            2 => Phase::Renewing,
            _ => Phase::Expired,
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

    /// How long 401s on this token are taken as the API's answer rather than the token's fault.
    fn unauthorized_grace(&self) -> Duration {
        match self.unauthorized_streak.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            n => Duration::from_secs(1 << (n - 1).min(9)).min(MAX_UNAUTHORIZED_GRACE),
        }
    }

    /// Records how a request replayed with this token after a 401 was answered.
    ///
    /// A replay that succeeded shows the old token was the problem (revoked, expired early):
    /// the next 401 is believed at once. A replay refused too shows the API refuses the
    /// request, whatever the token: 401s on this token are then returned as they are for a
    /// grace of 1, 2, 4, ... seconds (at most 5 minutes) before the layer logs in for them again,
    /// so an API that refuses everything costs a login now and then, not one per request.
    pub(crate) fn replayed(&self, refused: bool) {
        if refused {
            let _ = self.unauthorized_streak.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |streak| Some(streak.saturating_add(1).min(16)),
            );
        } else {
            self.unauthorized_streak.store(0, Ordering::Relaxed);
        }
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
            .field("phase", &self.phase())
            .finish()
    }
}

/// What a 401 on a token leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unauthorized {
    /// The token was discarded (now, or by an earlier 401): wait for the next one and replay.
    Renew,
    /// The token is kept: it was obtained moments ago after other 401s, so this 401 is the
    /// API's answer to the request (a missing permission), not a sign of a bad token.
    Keep,
}

/// The token cache shared by every service an [`AuthLayer`](crate::AuthLayer) makes.
pub(crate) struct Cache {
    pub(crate) config: Config,
    /// The token requests carry; `None` before the first login and after a 401 discarded it.
    current: ArcSwapOption<Token>,
    state: Mutex<State>,
    /// The most requests that waited on one login, counted when it answered.
    most_waiting: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// The login in flight, if any: every request that needs a token waits on this one.
    inflight: Option<watch::Receiver<Outcome>>,
    /// The last login's failure, while its back-off lasts.
    failure: Option<Failure>,
    /// Generation of the last token issued.
    generation: u64,
    /// Logins started so far.
    logins: u64,
}

impl State {
    /// The last login's failure, if its back-off has not ended: no new login before it has.
    fn backing_off(&self) -> Option<&Failure> {
        self.failure
            .as_ref()
            .filter(|failure| Instant::now() < failure.retry_at)
    }

    /// The login in flight. One whose task ended without an answer (its runtime shut down) does
    /// not count: waiting on it would fail at once, forever.
    fn live_inflight(&self) -> Option<watch::Receiver<Outcome>> {
        let inflight = self.inflight.as_ref()?;
        inflight.has_changed().is_ok().then(|| inflight.clone())
    }
}

struct Failure {
    error: Error,
    retry_at: Instant,
    /// Failed logins in a row.
    attempts: u32,
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
                    unauthorized_streak: AtomicU32::new(0),
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
            usable: current.is_some_and(|token| token.phase() != Phase::Expired),
            logins: state.logins,
            most_waiting: self.most_waiting.load(Ordering::Relaxed),
            last_error: state.failure.as_ref().map(|failure| failure.error.clone()),
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
    /// a new login. Fails fast with the last error while a failed login's back-off lasts.
    ///
    /// Decides at once (so that `inner` is not borrowed across an await) and returns the wait.
    pub(crate) fn token<S, B, RB>(
        self: &Arc<Self>,
        inner: &S,
    ) -> impl Future<Output = Result<Arc<Token>, Error>> + Send + 'static
    where
        S: HttpService<B, RB>,
        B: From<Bytes> + Send + 'static,
        RB: ResponseBody,
    {
        let lookup = self.lookup(inner);
        async move {
            match lookup? {
                Ok(token) => Ok(token),
                Err(inflight) => wait(inflight).await,
            }
        }
    }

    /// A usable token, or the login to wait on.
    #[allow(clippy::type_complexity)]
    fn lookup<S, B, RB>(
        self: &Arc<Self>,
        inner: &S,
    ) -> Result<Result<Arc<Token>, watch::Receiver<Outcome>>, Error>
    where
        S: HttpService<B, RB>,
        B: From<Bytes> + Send + 'static,
        RB: ResponseBody,
    {
        let mut state = self.lock();
        if let Some(token) = self.current.load_full() {
            if token.phase() != Phase::Expired {
                return Ok(Ok(token));
            }
        }
        if let Some(inflight) = state.live_inflight() {
            return Ok(Err(inflight));
        }
        if let Some(failure) = state.backing_off() {
            return Err(failure.error.clone());
        }
        let reason = if state.logins == 0 {
            Reason::FirstUse
        } else {
            Reason::Expired
        };
        self.start_login(&mut state, inner.clone(), reason, 0)
            .map(Err)
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
        if let Some(failure) = state.backing_off() {
            retry_renewal_at(token, failure.retry_at);
            return;
        }
        if let Err(error) = self.start_login(&mut state, inner.clone(), Reason::Renewal, 0) {
            // No runtime to log in on: try again later, from a request that has one.
            tracing::warn!(target: "patchworks_auth", %error, "background renewal not started");
            token.advance(Phase::Renewing, Phase::Due);
        }
    }

    /// Handles a 401 to a request that carried token `generation`: discards that token if it is
    /// still the current one and starts the login that replaces it.
    pub(crate) fn unauthorized<S, B, RB>(
        self: &Arc<Self>,
        generation: u64,
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
        let mut state = self.lock();
        let current = self.current.load_full();
        let Some(token) = current.filter(|token| token.generation == generation) else {
            // Already discarded or replaced by another request's 401 or a renewal.
            return Ok(Unauthorized::Renew);
        };
        let age = token.obtained_at.elapsed();
        let grace = token.unauthorized_grace();
        if age < grace {
            tracing::debug!(
                target: "patchworks_auth",
                generation,
                ?grace,
                "401 on a token obtained {age:?} ago after earlier 401s: kept, 401 returned as is"
            );
            return Ok(Unauthorized::Keep);
        }
        // Under the lock every writer of `current` is serialized; the comparison still makes
        // "discard only if it is still the current token" explicit.
        self.current.compare_and_swap(&Some(token.clone()), None);
        // The next token starts with this one's record; its own replays then lengthen or clear it.
        let streak = token.unauthorized_streak.load(Ordering::Relaxed);
        tracing::info!(
            target: "patchworks_auth",
            generation,
            "API answered 401: token discarded, logging in again"
        );
        if state.live_inflight().is_none() {
            if let Some(failure) = state.backing_off() {
                return Err(failure.error.clone());
            }
            self.start_login(&mut state, inner.clone(), Reason::Unauthorized, streak)?;
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
        unauthorized_streak: u32,
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
        state.inflight = Some(rx.clone());
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
                let outcome = cache.login(inner).await;
                let outcome = cache.finish(outcome, reason, unauthorized_streak);
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

    /// One login: through the wrapped service, bounded by the login timeout. Returns the issued
    /// token and when its request was sent.
    async fn login<S, B, RB>(&self, mut inner: S) -> Result<(login::Issued, Instant), Error>
    where
        S: HttpService<B, RB>,
        B: From<Bytes>,
        RB: ResponseBody,
    {
        let config = &self.config;
        let Secret::Login { email, password } = &config.credentials.secret else {
            return Err(Error::config("an API key needs no login"));
        };
        let attempt = async {
            let transport = |err: S::Error| Error::with_source(Kind::Transport, err);
            let inner = inner.ready().await.map_err(transport)?;
            let request = login::request(&config.login_url, email, password);
            let sent_at = Instant::now();
            let response = inner.call(request).await.map_err(transport)?;
            Ok((login::read_answer(response).await?, sent_at))
        };
        match tokio::time::timeout(config.login_timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::new(Kind::Timeout(config.login_timeout))),
        }
    }

    /// Stores a login's outcome: the new token, or the failure and its back-off.
    fn finish(
        self: &Arc<Self>,
        outcome: Result<(login::Issued, Instant), Error>,
        reason: Reason,
        unauthorized_streak: u32,
    ) -> Result<Arc<Token>, Error> {
        let mut state = self.lock();
        state.inflight = None;
        match outcome {
            Ok((issued, sent_at)) => {
                state.failure = None;
                state.generation += 1;
                let token = Arc::new(Token {
                    header: issued.header,
                    generation: state.generation,
                    phase: AtomicU8::new(Phase::Fresh as u8),
                    obtained_at: sent_at,
                    expires_at: Some(sent_at + issued.lifetime),
                    unauthorized_streak: AtomicU32::new(unauthorized_streak),
                    timer: OnceLock::new(),
                });
                let (renew_at, expire_at) = self.schedule(sent_at, issued.lifetime);
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
            Err(error) => {
                let attempts = state.failure.as_ref().map_or(0, |f| f.attempts) + 1;
                let backoff = backoff(&error, attempts);
                let retry_at = Instant::now() + backoff;
                tracing::warn!(
                    target: "patchworks_auth",
                    reason = reason.as_str(),
                    attempts,
                    retry_in = ?backoff,
                    %error,
                    "Patchworks login failed"
                );
                if let Some(token) = self.current.load_full() {
                    // A failed background renewal: the token stays in use until it expires, and
                    // renewal is tried again after the back-off.
                    retry_renewal_at(&token, retry_at);
                }
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_at,
                    attempts,
                });
                Err(error)
            }
        }
    }

    /// When a token obtained at `sent_at` living `lifetime` is renewed, and when it stops being
    /// sent.
    ///
    /// Renewal starts `refresh_before` ahead of expiry, but never earlier than half-way through
    /// the lifetime, so a short-lived token is not renewed on every request. A token stops being
    /// sent a tenth of its lifetime (at most 5 s) before it expires, to cover the timer's
    /// lateness and the request's time in flight.
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

fn backoff(error: &Error, attempts: u32) -> Duration {
    let (first, max) = if error.is_transient() {
        TRANSIENT_BACKOFF
    } else {
        REJECTED_BACKOFF
    };
    first.saturating_mul(1 << (attempts - 1).min(16)).min(max)
}

/// Moves a token whose renewal failed back to `Due` once the back-off ends.
fn retry_renewal_at(token: &Arc<Token>, at: Instant) {
    if token.phase() != Phase::Renewing {
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

/// Ages a token: due for renewal at `renew_at`, expired at `expire_at`.
///
/// If the task is dropped before that (its runtime shut down while the token lives on, say in a
/// client shared between runtimes), the token expires at once: with nobody keeping its time, it
/// is not trusted any longer.
async fn age(token: Weak<Token>, renew_at: Instant, expire_at: Instant) {
    struct ExpireOnDrop(Weak<Token>);
    impl Drop for ExpireOnDrop {
        fn drop(&mut self) {
            if let Some(token) = self.0.upgrade() {
                token.expire();
            }
        }
    }
    let _guard = ExpireOnDrop(token.clone());
    if renew_at < expire_at {
        sleep_until(renew_at).await;
        if let Some(token) = token.upgrade() {
            token.advance(Phase::Fresh, Phase::Due);
        }
    }
    sleep_until(expire_at).await;
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
    fn backoff_grows_and_is_capped() {
        let rejected = Error::new(Kind::Rejected(http::StatusCode::UNAUTHORIZED));
        let down = Error::new(Kind::Status(http::StatusCode::BAD_GATEWAY));
        let secs = |e, n| backoff(e, n).as_secs_f64();
        assert_eq!(
            [1, 2, 3, 7, 100].map(|n| secs(&rejected, n)),
            [5.0, 10.0, 20.0, 300.0, 300.0]
        );
        assert_eq!(
            [1, 2, 3, 4, 100].map(|n| secs(&down, n)),
            [0.25, 0.5, 1.0, 2.0, 2.0]
        );
    }
}
