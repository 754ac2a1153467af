//! The login driver: runs the logins the [token core](crate::token) asks for, on the Tokio
//! runtime, through "a function that logs in" ([`LoginFn`]), and through the shared
//! [store](crate::store) when there is one. It keeps the core's tokens aged with Tokio timers.
//!
//! It knows nothing of services or bodies either: the service hands it a [`LoginFn`] made from
//! the wrapped service ([`crate::login::attempt`]).

use crate::{
    config::Config,
    credentials::api_key_header,
    credentials::Secret,
    error::{Error, Kind},
    store::{Owner, Shared},
    token::{
        backoff, jitter, Core, Endpoint, Failure, Next, Obtained, Phase, Reason, Renewal, Ticket,
        Timings, Token, TokenState, Unauthorized,
    },
};
use arc_swap::ArcSwapOption;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    time::Duration,
};
use tokio::{
    sync::watch,
    time::{sleep, sleep_until, timeout_at, Instant},
};

/// How many logins a waiter starts itself when the ones it waited on died with their runtime.
const MAX_ABANDONED: usize = 3;
/// How often a process waiting for another's login polls the store (plus up to half again).
const STORE_POLL: Duration = Duration::from_millis(100);
/// How often a process that logged in while the store was down tries to share its token again,
/// or take the fleet's (plus up to half again): every 500 ms at first, doubling to every 30 s
/// while the store stays down.
const RESYNC: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A function that logs in once: one attempt, no retries (the driver retries).
pub(crate) type LoginFn = Arc<dyn Fn() -> BoxFuture<Result<Obtained, Error>> + Send + Sync>;

/// The token cache shared by every service an [`AuthLayer`](crate::AuthLayer) makes: the core,
/// what it was built with, and the shared store if any.
pub(crate) struct Cache {
    pub(crate) config: Config,
    pub(crate) core: Core,
    store: Option<Shared>,
}

impl Cache {
    pub(crate) fn new(mut config: Config) -> Arc<Cache> {
        let timings = Timings {
            refresh_before: config.refresh_before,
            login_timeout: config.login_timeout,
        };
        let (core, store) = match &config.credentials.secret {
            Secret::Login { email, password } => (
                Core::new(timings),
                config.store.as_ref().map(|store| {
                    Shared::new(store, &config.login_url, email, password, config.store_key)
                }),
            ),
            // An API key is the token: in place from the start, never aged, never renewed, and
            // never stored.
            Secret::ApiKey(key) => match api_key_header(key) {
                Some(header) => (Core::api_key(timings, header), None),
                None => {
                    config.scope = Err(Error::config(
                        "the API key is not a valid header value (empty, or with control \
                         characters); check the key",
                    ));
                    (Core::new(timings), None)
                }
            },
        };
        Arc::new(Cache {
            config,
            core,
            store,
        })
    }

    /// What is known of the token, without the token.
    pub(crate) fn state(&self) -> TokenState {
        let mut state = self.core.state();
        state.store_outages = self.store.as_ref().map_or(0, Shared::outages);
        state
    }

    /// A token that may be sent: the current one, or the outcome of the login in flight, or of
    /// a new login. Fails at once only when no login can succeed now (see [`Next::Failed`]).
    ///
    /// A waiter whose login died with its runtime starts one itself, on its own runtime.
    pub(crate) fn token(
        self: &Arc<Self>,
        login: LoginFn,
    ) -> impl Future<Output = Result<Arc<Token>, Error>> + Send + 'static {
        let cache = self.clone();
        async move {
            for _ in 0..=MAX_ABANDONED {
                let inflight = match cache.core.next() {
                    Next::Ready(token) => return Ok(token),
                    Next::Failed(error) => return Err(error),
                    Next::Wait(inflight) => inflight,
                    Next::Start(ticket, inflight) => {
                        cache.run(ticket, login.clone())?;
                        inflight
                    }
                };
                match wait(inflight).await {
                    Err(error) if error.is_abandoned() => continue,
                    outcome => return outcome,
                }
            }
            Err(Error::new(Kind::Abandoned))
        }
    }

    /// Starts a background renewal for a token in its refresh window. Called by the one request
    /// that moved the token from `Due` to `Renewing`.
    #[cold]
    #[inline(never)]
    pub(crate) fn renew(self: &Arc<Self>, token: &Arc<Token>, login: LoginFn) {
        match self.core.renew(token) {
            Renewal::InFlight => {}
            Renewal::Later(at) => retry_renewal_at(token, at),
            Renewal::Start(ticket) => {
                if let Err(error) = self.run(ticket, login) {
                    // No runtime to log in on: try again later, from a request that has one.
                    tracing::warn!(target: "patchworks_auth", %error, "background renewal not started");
                    token.advance(Phase::Renewing, Phase::Due);
                }
            }
        }
    }

    /// A request with a token had an answer other than 401.
    #[inline]
    pub(crate) fn answered(&self, endpoint: impl FnOnce() -> Endpoint) {
        self.core.answered(endpoint);
    }

    /// A request replayed after a 401 was answered: refused again (`true`) or not.
    pub(crate) fn replayed(&self, endpoint: Endpoint, refused: bool) {
        self.core.replayed(endpoint, refused);
    }

    /// A 401 on token `generation` from `endpoint` (see [`Core::unauthorized`]); starts the
    /// login that replaces the token, if it is discarded.
    pub(crate) fn unauthorized(
        self: &Arc<Self>,
        generation: u64,
        endpoint: &Endpoint,
        login: LoginFn,
    ) -> Result<Unauthorized, Error> {
        let (unauthorized, ticket) = self.core.unauthorized(generation, endpoint)?;
        if let Some(ticket) = ticket {
            self.run(ticket, login)?;
        }
        Ok(unauthorized)
    }

    /// Runs a ticket's login on the current Tokio runtime; it runs to its end even if every
    /// request waiting on it is dropped.
    fn run(self: &Arc<Self>, ticket: Ticket, login: LoginFn) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config("a login needs a Tokio runtime; call the service from within one")
        })?;
        let reason = ticket.reason;
        tracing::debug!(target: "patchworks_auth", reason = reason.as_str(), "login started");
        let span = tracing::info_span!(
            target: "patchworks_auth",
            "patchworks_login",
            reason = reason.as_str(),
            login_host = self.config.login_url.host().unwrap_or_default(),
        );
        let cache = self.clone();
        runtime.spawn(tracing::Instrument::instrument(
            async move {
                let outcome = cache.obtain(&ticket, &login).await;
                cache.finish(ticket, outcome);
            },
            span,
        ));
        Ok(())
    }

    /// A token for `ticket`: from the shared store if it holds a newer one, else from a login
    /// (one for the whole fleet when the store can coordinate it).
    async fn obtain(&self, ticket: &Ticket, login: &LoginFn) -> Result<Obtained, Failure> {
        let Some(store) = &self.store else {
            return self.log_in(login, ticket.after.clone()).await;
        };
        let newer = |obtained: &Obtained| self.newer(ticket, obtained);
        // A lock lapses after its lifetime (the login timeout) and a waiter takes it over, so a
        // holder that died delays the others by that much. A waiter gives up and logs in by
        // itself only after the lifetime and one more login (its new holder's) have passed:
        // when the lock never comes free (a file lock held by a hung process).
        let wait_until = Instant::now() + 2 * self.config.login_timeout;
        let owner = Owner::new();
        loop {
            match store.load().await {
                Ok(Some(shared)) if newer(&shared) => return Ok(shared),
                Ok(_) => {}
                Err(()) => return self.log_in(login, ticket.after.clone()).await,
            }
            match store.lock(&owner, self.config.login_timeout).await {
                Ok(true) => {
                    // Taken: another process may have saved and let go since the load.
                    let outcome = match store.load().await {
                        Ok(Some(shared)) if newer(&shared) => Ok(shared),
                        _ => self.log_in(login, ticket.after.clone()).await,
                    };
                    if let Ok(obtained) = &outcome {
                        if !obtained.shared {
                            store.save(obtained, self.core.timings()).await;
                        }
                    }
                    store.unlock(&owner).await;
                    return outcome;
                }
                Ok(false) if Instant::now() < wait_until => {
                    // Another process logs in: its token will be in the store.
                    sleep(jitter(STORE_POLL)).await;
                }
                Ok(false) => {
                    tracing::warn!(
                        target: "patchworks_auth",
                        "the store's login lock outlived its lifetime: logging in without it"
                    );
                    let outcome = self.log_in(login, ticket.after.clone()).await;
                    if let Ok(obtained) = &outcome {
                        store.save(obtained, self.core.timings()).await;
                    }
                    return outcome;
                }
                Err(()) => return self.log_in(login, ticket.after.clone()).await,
            }
        }
    }

    /// Whether a token found in the store may replace what `ticket` replaces: not the same
    /// token, and for a renewal, not itself due for renewal.
    fn newer(&self, ticket: &Ticket, shared: &Obtained) -> bool {
        if let Some(stale) = &ticket.stale {
            if stale.header == shared.header {
                return false;
            }
        }
        ticket.reason != Reason::Renewal || self.fresh(shared)
    }

    /// Whether a token is not yet due for renewal.
    fn fresh(&self, shared: &Obtained) -> bool {
        let timings = self.core.timings();
        Instant::now() < timings.schedule(shared.obtained_at, shared.lifetime).0
    }

    /// One login: attempts through `login` until one succeeds, one fails in a way that needs a
    /// fix, or the login timeout runs out.
    ///
    /// A transient failure (5xx, 429, no connection, an attempt taking a third of the login
    /// timeout) is tried again after a jittered back-off, or after the `Retry-After` the
    /// endpoint asked for; the first attempt waits out the back-off of the failure before it.
    async fn log_in(&self, login: &LoginFn, after: Option<Failure>) -> Result<Obtained, Failure> {
        self.core.count_login();
        let login_timeout = self.config.login_timeout;
        let start = Instant::now();
        let deadline = start + login_timeout;
        let per_attempt = login_timeout / 3;
        // The failure before this login stands until an attempt of its own fails.
        let (mut attempts, mut next_at, mut last) = match after {
            Some(failure) => (failure.attempts, failure.retry_at, Some(failure.error)),
            None => (0, start, None),
        };
        loop {
            if next_at >= deadline {
                // The wait alone outlasts the login: fail now rather than make callers wait for
                // nothing, and let the next login start when the wait is over.
                let error = last.unwrap_or_else(|| Error::new(Kind::Timeout(login_timeout)));
                return Err(Failure {
                    error,
                    retry_at: next_at,
                    attempts,
                });
            }
            sleep_until(next_at).await;
            let attempt_ends = deadline.min(Instant::now() + per_attempt);
            let error = match timeout_at(attempt_ends, login()).await {
                Ok(Ok(obtained)) => return Ok(obtained),
                Ok(Err(error)) => error,
                Err(_) if attempt_ends >= deadline => Error::new(Kind::Timeout(login_timeout)),
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

    /// Hands a login's outcome to the core, logs it, and keeps the new token aged.
    fn finish(self: &Arc<Self>, ticket: Ticket, outcome: Result<Obtained, Failure>) {
        let reason = ticket.reason;
        let (shared, retry_at) = match &outcome {
            Ok(obtained) => (obtained.shared, None),
            Err(failure) => (false, Some(failure.retry_at)),
        };
        match (self.core.finish(ticket, outcome), retry_at) {
            (Ok(token), _) => {
                self.keep_aged(&token);
                if shared {
                    tracing::info!(
                        target: "patchworks_auth",
                        reason = reason.as_str(),
                        generation = token.generation,
                        "token taken from the shared store"
                    );
                } else {
                    tracing::info!(
                        target: "patchworks_auth",
                        reason = reason.as_str(),
                        generation = token.generation,
                        lifetime = ?token.lifetime(),
                        took = ?token.obtained_at.elapsed(),
                        "logged in to Patchworks"
                    );
                    if self.store.as_ref().is_some_and(Shared::is_down) {
                        self.resync(&token);
                    }
                }
            }
            (Err(error), retry_at) => {
                let retry_at = retry_at.unwrap_or_else(Instant::now);
                tracing::warn!(
                    target: "patchworks_auth",
                    reason = reason.as_str(),
                    retry_in = ?retry_at.saturating_duration_since(Instant::now()),
                    %error,
                    "Patchworks login failed"
                );
                if let Some(token) = self.core.current().load_full() {
                    // A failed background renewal: the token stays in use until it expires, and
                    // renewal is tried again after the back-off.
                    retry_renewal_at(&token, retry_at);
                }
            }
        }
    }

    /// Ages a token on Tokio's clock (see [`age`]).
    fn keep_aged(&self, token: &Arc<Token>) {
        let (Some(lifetime), Ok(runtime)) =
            (token.lifetime(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (renew_at, expire_at) = self.core.timings().schedule(token.obtained_at, lifetime);
        let timer = runtime.spawn(age(Arc::downgrade(token), renew_at, expire_at));
        token.set_timer(timer.abort_handle());
    }

    /// After a login made while the store was down: until the token expires, tries now and
    /// then to take the fleet's token from the store, or to share this one, so that the fleet
    /// converges on one token again without a login once the store is back.
    fn resync(self: &Arc<Self>, token: &Arc<Token>) {
        let (cache, mine) = (Arc::downgrade(self), Arc::downgrade(token));
        tokio::spawn(async move {
            let owner = Owner::new();
            let mut every = RESYNC.0;
            loop {
                sleep(jitter(every)).await;
                let (Some(cache), Some(mine)) = (cache.upgrade(), mine.upgrade()) else {
                    return; // the layer is gone, or the token was replaced
                };
                let current = cache.core.current().load_full();
                if !mine.usable() || !current.is_some_and(|current| Arc::ptr_eq(&current, &mine)) {
                    return;
                }
                let Some(store) = &cache.store else { return };
                match store.load().await {
                    Err(()) => {
                        every = (every * 2).min(RESYNC.1);
                        continue;
                    }
                    Ok(Some(shared)) if shared.header == mine.header => return,
                    Ok(Some(shared)) if !cache.fresh(&shared) => continue,
                    Ok(Some(shared)) => {
                        if let Some(token) = cache.core.adopt(shared) {
                            cache.keep_aged(&token);
                            tracing::info!(
                                target: "patchworks_auth",
                                generation = token.generation,
                                "store back: took the fleet's token"
                            );
                        }
                        return;
                    }
                    Ok(None) => {
                        if store.lock(&owner, cache.config.login_timeout).await == Ok(true) {
                            if let Ok(None) = store.load().await {
                                let lifetime = mine.lifetime();
                                if let Some(lifetime) = lifetime {
                                    let obtained = Obtained {
                                        header: mine.header.clone(),
                                        obtained_at: mine.obtained_at,
                                        lifetime,
                                        shared: false,
                                    };
                                    store.save(&obtained, cache.core.timings()).await;
                                    tracing::info!(
                                        target: "patchworks_auth",
                                        "store back: shared this process's token"
                                    );
                                }
                            }
                            store.unlock(&owner).await;
                        }
                    }
                }
            }
        });
    }
}

/// The current token of a cache, for [`arc_swap::Cache`]: each service keeps its own handle, so
/// that a request with a fresh token reads one pointer instead of doing a full `ArcSwap` load.
#[derive(Clone)]
pub(crate) struct Current(pub(crate) Arc<Cache>);

impl std::ops::Deref for Current {
    type Target = ArcSwapOption<Token>;

    fn deref(&self) -> &Self::Target {
        self.0.core.current()
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.config)
            .field("token", &self.core.current().load())
            .finish()
    }
}

/// Waits for the outcome of a login in flight.
async fn wait(mut inflight: watch::Receiver<crate::token::Outcome>) -> Result<Arc<Token>, Error> {
    match inflight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(Error::new(Kind::Abandoned))),
        // The login task was dropped: its runtime shut down.
        Err(_) => Err(Error::new(Kind::Abandoned)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{credentials::Credentials, scope::Scope, token::Endpoint};
    use http::{HeaderValue, StatusCode, Uri};
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    fn cache(login_timeout: Duration) -> Arc<Cache> {
        let login_url = Uri::from_static("https://svc-fabric.pwks.co/api/v1/login");
        Cache::new(Config {
            credentials: Credentials::new("ops@example.com", "hunter2"),
            scope: Scope::new(&login_url),
            login_url,
            refresh_before: Duration::from_secs(300),
            login_timeout,
            replay_body_limit: 0,
            store: None,
            store_key: None,
        })
    }

    /// A login function that answers from `answers` in turn (the last one for ever), after
    /// `delay`, counting its calls.
    fn login(
        answers: Vec<Result<Duration, Error>>,
        delay: Duration,
    ) -> (LoginFn, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(answers));
        let counter = calls.clone();
        let login: LoginFn = Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let answers = answers.lock().unwrap();
            let answer = answers[n.min(answers.len() - 1)].clone();
            Box::pin(async move {
                let obtained_at = Instant::now();
                tokio::time::sleep(delay).await;
                let mut header = HeaderValue::from_str(&format!("Bearer token-{n}")).unwrap();
                header.set_sensitive(true);
                answer.map(|lifetime| Obtained {
                    header,
                    obtained_at,
                    lifetime,
                    shared: false,
                })
            })
        });
        (login, calls)
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn unavailable() -> Error {
        Error::new(Kind::Status(StatusCode::SERVICE_UNAVAILABLE, None))
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_login() {
        let cache = cache(Duration::from_secs(30));
        let (login, calls) = login(vec![Ok(DAY)], Duration::from_millis(200));
        let waiters: Vec<_> = (0..50)
            .map(|_| tokio::spawn(cache.token(login.clone())))
            .collect();
        for waiter in waiters {
            let token = waiter.await.unwrap().unwrap();
            assert_eq!(token.header, "Bearer token-0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let state = cache.state();
        assert_eq!((state.logins, state.most_waiting), (1, 50));
        // Cached: no login for the next caller.
        cache.token(login).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_backoff_inside_the_login_timeout() {
        let cache = cache(Duration::from_secs(30));
        let (login, calls) = login(
            vec![Err(unavailable()), Err(unavailable()), Ok(DAY)],
            Duration::ZERO,
        );
        let start = Instant::now();
        let token = cache.token(login).await.unwrap();
        assert_eq!(token.header, "Bearer token-2");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // 250 ms then 500 ms, each plus up to half again.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(750) && took <= Duration::from_millis(1125),
            "{took:?}"
        );
        assert_eq!(cache.state().logins, 1, "one login, three attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_out_of_time_fails_with_its_last_error_and_the_next_caller_tries_again() {
        let cache = cache(Duration::from_secs(3));
        let (login, calls) = login(vec![Err(unavailable())], Duration::ZERO);
        let error = cache.token(login.clone()).await.unwrap_err();
        assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        let attempts = calls.load(Ordering::SeqCst);
        assert!((3..=5).contains(&attempts), "{attempts} attempts in 3 s");
        // Transient: the next caller starts a login of its own (after the back-off).
        let _ = cache.token(login).await;
        assert!(calls.load(Ordering::SeqCst) > attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_credentials_fail_fast_during_their_backoff() {
        let cache = cache(Duration::from_secs(30));
        let rejected = Error::new(Kind::Rejected(StatusCode::UNAUTHORIZED));
        let (login, calls) = login(vec![Err(rejected)], Duration::ZERO);
        assert!(cache.token(login.clone()).await.unwrap_err().is_rejected());
        for _ in 0..10 {
            assert!(cache.token(login.clone()).await.unwrap_err().is_rejected());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(7_600)).await;
        assert!(cache.token(login).await.unwrap_err().is_rejected());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "tried again after 5 to 7.5 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_renewed_in_its_window_while_it_stays_in_use() {
        let cache = cache(Duration::from_secs(30));
        let (login, calls) = login(vec![Ok(Duration::from_secs(600))], Duration::from_secs(1));
        let first = cache.token(login.clone()).await.unwrap();
        // 600 s tokens: renewal due after 300 s (half the lifetime caps the 5 min window).
        sleep(Duration::from_secs(301)).await;
        assert_eq!(first.phase(), Phase::Due);
        assert!(first.advance(Phase::Due, Phase::Renewing));
        cache.renew(&first, login.clone());
        // Still sent while the renewal runs.
        let during = cache.token(login.clone()).await.unwrap();
        assert_eq!(during.generation, first.generation);
        sleep(Duration::from_secs(2)).await;
        let renewed = cache.token(login).await.unwrap();
        assert_eq!(renewed.header, "Bearer token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_discards_its_token_once_and_a_ticket_dropped_unfinished_is_not_waited_on() {
        let cache = cache(Duration::from_secs(30));
        let (login, calls) = login(vec![Ok(DAY)], Duration::from_millis(10));
        let token = cache.token(login.clone()).await.unwrap();
        let endpoint = Endpoint {
            method: http::Method::GET,
            path: "/api/v1/flows".into(),
        };
        // Ten requests carried the token and got 401: one login replaces it.
        for _ in 0..10 {
            let what = cache
                .unauthorized(token.generation, &endpoint, login.clone())
                .unwrap();
            assert_eq!(what, Unauthorized::Renew);
        }
        let next = cache.token(login.clone()).await.unwrap();
        assert_eq!(next.generation, token.generation + 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // The core alone: a ticket whose login task vanished leaves nobody waiting for ever.
        let core = Core::new(Timings {
            refresh_before: Duration::from_secs(300),
            login_timeout: Duration::from_secs(30),
        });
        let Next::Start(ticket, waiter) = core.next() else {
            panic!("no token: a login starts")
        };
        assert!(matches!(core.next(), Next::Wait(_)), "one login at a time");
        drop(ticket);
        assert!(wait(waiter).await.unwrap_err().is_abandoned());
        assert!(matches!(core.next(), Next::Start(..)), "a new login starts");
    }
}
