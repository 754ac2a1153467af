//! The driver: carries out the [token core](crate::token)'s decisions on Tokio.
//!
//! It holds the core behind a lock that is never held across an await, the current token in an
//! `ArcSwap` for the request path, and a `watch` channel that every change of the core is
//! announced on: a request that waits for a login subscribes, then asks the core, so no change
//! between the two is missed. It runs logins (through "a function that logs in", [`LoginFn`],
//! which the adapters make) and the shared [store](crate::store), and ages tokens with one
//! timer that asks the core when it next needs to run ([`Core::poll_timeout`]).
//!
//! Work in flight is owned by a guard: a login is run by a [`Claim`], and a claim dropped
//! unfinished (with its task, its future or its runtime) hands the login back to the core, so
//! the next request starts another and nobody waits on a login nobody runs. A renewal handed
//! back so is due again at once, and the request that takes it up waits for it, so that it runs
//! while a runtime does.

use crate::{
    bounds::BoxFuture,
    budget::Purpose,
    challenge::{self, Verdict},
    clock::Coarse,
    config::{BudgetChoice, Config},
    credentials::{api_key_header, Secret},
    error::Error,
    login::{Login, LoginFn},
    scope::Scope,
    store::{Owner, Shared, STORE_TIMEOUT},
    token::{
        resync_at, Attempts, Checked, Core, Due, Ended, Endpoint, Failure, Need, Obtained, Reason,
        Renew, Start, Step, Timings, TokenState, Unauthorized,
    },
};
use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderValue};
use std::{
    fmt,
    future::{poll_fn, Future},
    pin::pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Weak,
    },
    task::Poll,
    time::Duration,
};
use tokio::{
    sync::{watch, Notify},
    time::{sleep_until, Instant},
};
use tower::util::rng::{HasherRng, Rng};

mod answers;
mod logins;
mod replays;
mod store;
mod token;

use answers::Checking;
pub(crate) use answers::{Again, CheckFn};
pub(crate) use replays::Transport;
use token::back_off;
pub(crate) use token::{Phase, Token};

// The model check (src/checks/driver_model.rs, a unit test under `--cfg shuttle`) swaps the
// core's lock for shuttle's, which explores the orders in which requests, logins and 401s take
// it.
#[cfg(all(test, shuttle))]
use shuttle::sync::{Mutex, MutexGuard};
#[cfg(not(all(test, shuttle)))]
use std::sync::{Mutex, MutexGuard};

/// The timings the core ages tokens by, from what the layer was built with (constant: read
/// without the core's lock).
fn timings(config: &Config) -> Timings {
    Timings {
        refresh_before: config.refresh_before,
        login_timeout: config.login_timeout,
    }
}

/// A draw in `[0, 1)` for the core's jittered back-offs.
fn jitter() -> f64 {
    HasherRng::default().next_f64()
}

/// A switch point for the model check: the `watch` channel is not shuttle's, so each use of it
/// is made one by hand, as a thread may be preempted there.
#[inline]
fn switch() {
    #[cfg(all(test, shuttle))]
    shuttle::thread::yield_now();
}

/// What a request waits for after its answer, so that it is done while the request's runtime
/// runs: a renewal it took up ([`Cache::check`]), or the saving in the store of the token its
/// login obtained ([`Cache::token`]).
pub(crate) type After = Option<BoxFuture<()>>;

/// Where a request goes, as [`Cache::route`] decides for every adapter.
pub(crate) enum Route {
    /// The layer's configuration is refused: the request fails with this, unsent.
    Refused(Error),
    /// Sent as it is, without the token: it has its own `Authorization`, or its origin is not
    /// trusted.
    Untouched,
    /// Sent with the token.
    Authorize,
}

/// What a request does with the token it read; see [`Cache::check`].
pub(crate) enum Check<'a> {
    Send(&'a Arc<Token>),
    Join(&'a Arc<Token>, BoxFuture<()>),
    Wait,
}

/// The token cache shared by every service an [`AuthLayer`](crate::AuthLayer) makes: the core,
/// what it was built with, the current token, and the shared store if any.
pub(crate) struct Cache {
    pub(crate) config: Config,
    /// The one configuration rule's verdict ([`Config::judge`]): which requests get the token,
    /// or the first input refused, which every call then fails with.
    pub(crate) judged: Result<Scope, Error>,
    /// The API budget as the layer keeps it (with the store's key), if it has one.
    pub(crate) gate: Option<Arc<crate::budget::Gate>>,
    /// What every login of the layer sends and spends.
    pub(crate) login: Arc<Login>,
    core: Mutex<Core>,
    /// The token requests carry; `None` before the first login and after a 401 discarded it.
    /// Written only under the `core` lock, with the core's own view of it.
    current: ArcSwapOption<Token>,
    /// Whether the request path reports answers ([`Cache::answered`]): the core wants them
    /// ([`Core::wants_answers`]), or an API budget watches for 429s. One load on the request
    /// path for both.
    wants_answers: AtomicBool,
    /// Whether the core wants answers (kept apart for a layer with a budget).
    core_wants: AtomicBool,
    /// What is known of the token, sent after every change of the core: what requests waiting
    /// on a login wake on, and what [`Cache::watch`] hands out.
    changes: watch::Sender<TokenState>,
    /// Logins run so far (tokens taken from a shared store are not logins).
    logins: AtomicU64,
    /// The most requests that waited on one login, counted when it answered, and the requests
    /// waiting now.
    most_waiting: AtomicUsize,
    waiting: AtomicUsize,
    store: Option<Shared>,
    /// The last check that settled a bare 401, shared by the 401s waiting for it.
    check: std::sync::Mutex<Option<Checking>>,
    /// When a request last went through untouched for its untrusted origin, and was said at
    /// DEBUG (seconds since the Unix epoch; 0 for never).
    untrusted_told: AtomicU64,
    /// Whether the configuration's error was logged.
    config_told: AtomicBool,
    /// Wakes the driver's one timer when the core's deadlines changed, or the cache is gone.
    timer: Arc<Notify>,
    /// The timer's task, while one runs.
    timer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Cache {
    pub(crate) fn new(config: Config) -> Arc<Cache> {
        let timings = timings(&config);
        let (api_key, store) = match &config.credentials.secret {
            Secret::Login {
                account,
                password,
                form,
                scope,
                ..
            } => (
                None,
                config.store.as_ref().map(|store| {
                    let login = (*form, account.as_str(), password.as_str(), scope.as_deref());
                    Shared::new(store, &config.login_url, login, config.store_key)
                }),
            ),
            // An API key is the token: in place from the start, never aged, never renewed, and
            // never stored.
            // (A key that is not a header value is the configuration's error: `Config::judge`.)
            Secret::ApiKey(key) => (api_key_header(key), None),
        };
        let gate = match config.budget {
            BudgetChoice::On(budget) => {
                // Login tokens and API keys share one limit: an API key's budget is shared
                // through the store too, under its hash, though the key itself is never stored.
                let shared = match (&store, &config.store, &config.credentials.secret) {
                    (Some(store), ..) => Some(store.budget()),
                    (None, Some(store), Secret::ApiKey(key)) => {
                        Some((store.clone(), crate::store::api_key_budget_key(key)))
                    }
                    _ => None,
                };
                Some(Arc::new(crate::budget::Gate::new(budget, shared)))
            }
            BudgetChoice::Unset | BudgetChoice::Off => None,
        };
        let budgeted = gate.is_some();
        let now = Instant::now();
        let current = api_key.clone().map(|header| {
            let obtained = Obtained {
                header,
                obtained_at: now,
                lifetime: Duration::ZERO,
                shared: false,
                scope: None,
            };
            Arc::new(Token::new(&obtained, 0, None))
        });
        Arc::new(Cache {
            judged: config.judge(),
            login: Arc::new(Login::new(&config, gate.clone())),
            gate,
            config,
            core: Mutex::new(Core::new(timings, api_key, now)),
            current: ArcSwapOption::new(current),
            wants_answers: AtomicBool::new(budgeted),
            core_wants: AtomicBool::new(false),
            changes: watch::Sender::new(TokenState::default()),
            logins: AtomicU64::new(0),
            most_waiting: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            store,
            check: std::sync::Mutex::new(None),
            untrusted_told: AtomicU64::new(0),
            config_told: AtomicBool::new(false),
            timer: Arc::default(),
            timer_task: std::sync::Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The lock is never held across an await or user code, so a poisoned lock only means a
        // panic elsewhere; the core is still consistent.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current token, as requests read it: a guard, held for one request's decision and
    /// never across an await.
    #[inline]
    pub(crate) fn current(&self) -> arc_swap::Guard<Option<Arc<Token>>> {
        self.current.load()
    }

    /// Announces a change of the core to the requests waiting on one, and to watchers.
    fn changed(&self, core: &Core) {
        self.hint(core);
        switch();
        self.changes.send_replace(self.snapshot(core));
    }

    /// A receiver of the changes to come.
    fn subscribe(&self) -> watch::Receiver<TokenState> {
        switch();
        self.changes.subscribe()
    }

    /// Takes one unit of the API budget, if there is one, for a request about to be sent to
    /// Patchworks (an API call or a replay; logins take theirs in [`login_through`]).
    ///
    /// [`login_through`]: crate::login::login_through
    pub(crate) async fn spend(&self) -> Result<crate::budget::Spent, Error> {
        match &self.gate {
            Some(gate) => gate.take(Purpose::Request).await,
            None => Ok(crate::budget::Spent::none()),
        }
    }

    /// Logs the configuration's error at ERROR, once, where the layer is put to use: a service
    /// made with it, a middleware, the ready client.
    pub(crate) fn tell_config(&self) {
        if let Err(error) = &self.judged {
            if !self.config_told.swap(true, Ordering::Relaxed) {
                tracing::error!(target: "patchworks_auth", %error, "invalid configuration");
            }
        }
    }

    /// Where a request with `headers` to `uri` (`None`: not a URI) goes: the one origin check
    /// and pass-through rule of both adapters.
    #[inline]
    pub(crate) fn route(&self, headers: &HeaderMap, uri: Option<&http::Uri>) -> Route {
        let scope = match &self.judged {
            Ok(scope) => scope,
            Err(error) => return Route::Refused(error.clone()),
        };
        if headers.contains_key(http::header::AUTHORIZATION) {
            // The caller's own credentials: not ours to touch.
            return Route::Untouched;
        }
        match uri {
            Some(uri) if scope.contains(uri) => Route::Authorize,
            Some(uri) => {
                self.untrusted(uri);
                Route::Untouched
            }
            None => Route::Untouched,
        }
    }

    /// A request to `uri` goes through untouched, its origin not trusted with the token: said
    /// at DEBUG, at most once a minute, so that a silent 401 from an API on another origin has
    /// an explanation (`AuthLayer::trust_origin`).
    #[cold]
    #[inline(never)]
    pub(crate) fn untrusted(&self, uri: &http::Uri) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_secs().max(1));
        let told = self.untrusted_told.load(Ordering::Relaxed);
        let due = told == 0 || now >= told + 60;
        if due
            && self
                .untrusted_told
                .compare_exchange(told, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::debug!(
                target: "patchworks_auth",
                origin = %format_args!(
                    "{}://{}",
                    uri.scheme_str().unwrap_or("?"),
                    uri.host().unwrap_or("?")
                ),
                "request sent without the token: its origin is not trusted \
                 (AuthLayer::login_url's, a Patchworks host, or AuthLayer::trust_origin)"
            );
        }
    }

    /// Patchworks answered 429: the API budget pauses, if there is one.
    #[cold]
    #[inline(never)]
    pub(crate) fn throttled(&self, headers: &http::HeaderMap) {
        if let Some(gate) = &self.gate {
            gate.too_many(headers);
        }
    }

    /// A unit of the API budget now, without waiting (see [`Gate::take_now`]), held by its
    /// guard; none needed without a budget. `None` if the request must wait for one.
    ///
    /// [`Gate::take_now`]: crate::budget::Gate::take_now
    pub(crate) fn take_now(&self) -> Option<crate::budget::Spent> {
        match &self.gate {
            Some(gate) => gate.take_now(),
            None => Some(crate::budget::Spent::none()),
        }
    }

    /// What is known of the token, without the token.
    pub(crate) fn state(&self) -> TokenState {
        self.snapshot(&self.lock())
    }

    /// A receiver of what is known of the token, marked changed after every login outcome and
    /// every token discarded.
    pub(crate) fn watch(&self) -> watch::Receiver<TokenState> {
        self.changes.subscribe()
    }

    fn snapshot(&self, core: &Core) -> TokenState {
        let current = self.current.load_full();
        // An API key is neither obtained nor expires.
        let login = current.as_ref().filter(|token| token.expires_at.is_some());
        TokenState {
            obtained_at: login.map(|token| token.obtained_at.into_std()),
            expires_at: login
                .and_then(|token| token.expires_at)
                .map(Instant::into_std),
            usable: current
                .as_ref()
                .is_some_and(|token| token.phase() != Phase::Expired),
            logins: self.logins.load(Ordering::Relaxed),
            most_waiting: self.most_waiting.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            last_error: core.last_error().cloned(),
            last_reason: core.last_reason(),
            granted_scope: current
                .as_ref()
                .and_then(|token| token.scope.as_deref().map(str::to_owned)),
            store_outages: self.store.as_ref().map_or(0, Shared::outages),
        }
    }

    /// What the API budget counted (all zero without one).
    pub(crate) fn budget_state(&self) -> crate::budget::BudgetState {
        let gate = self.gate.as_deref();
        gate.map_or_else(Default::default, crate::budget::Gate::state)
    }

    /// A token that may be sent: the current one, or the outcome of the login in flight, or of
    /// a new login, as the core decides. Fails only when the core says so. With the token comes
    /// what the request that started its login waits for after its answer (see [`After`]).
    pub(crate) fn token(
        self: &Arc<Self>,
        login: LoginFn,
    ) -> impl Future<Output = Result<(Arc<Token>, After), Error>> + Send + 'static {
        let cache = self.clone();
        self.token_with(move |start| cache.run(start, login.clone()))
    }

    /// [`Cache::token`], with the logins the core asks for run by `run` (the model check runs
    /// them on its own threads).
    pub(crate) fn token_with(
        self: &Arc<Self>,
        run: impl Fn(Start) -> Result<After, Error> + Send + 'static,
    ) -> impl Future<Output = Result<(Arc<Token>, After), Error>> + Send + 'static {
        let cache = self.clone();
        async move {
            let (mut waited, mut restarts, mut after) = (None, 0, None);
            loop {
                // Subscribed before the core is asked: a change after the answer wakes us.
                let mut changes = cache.subscribe();
                let need = cache.lock().need(Instant::now(), waited, restarts);
                match need {
                    Need::Send => {
                        if let Some(token) = cache.current.load_full() {
                            return Ok((token, after));
                        }
                        continue; // discarded since: ask again
                    }
                    Need::Fail(error) => return Err(error),
                    Need::Wait(id) => waited = Some(id),
                    Need::Start(start) => {
                        restarts += u32::from(waited.is_some());
                        waited = Some(start.id);
                        after = run(start)?;
                    }
                }
                // The sender lives as long as `cache`: this only ends on a change.
                let _waiting = crate::budget::Counted::new(&cache.waiting);
                let _ = changes.changed().await;
            }
        }
    }

    /// What a request does with the token it read (`None`: no token): send it (`Check::Send`),
    /// send it and wait for the renewal it took up (`Check::Join`), or wait for a login
    /// (`Check::Wait`, then [`Cache::token`]). The first request to see the token due starts its
    /// renewal, with the login `login` makes. Both adapters decide so: the tower service on its
    /// request path, the reqwest middleware in [`Cache::acquire`].
    #[inline]
    pub(crate) fn check<'a>(
        self: &Arc<Self>,
        token: Option<&'a Arc<Token>>,
        login: impl FnOnce() -> LoginFn,
    ) -> Check<'a> {
        let Some(token) = token else {
            return Check::Wait;
        };
        match token.phase() {
            Phase::Fresh | Phase::Renewing => Check::Send(token),
            Phase::Due if token.advance(Phase::Due, Phase::Renewing) => {
                match self.renew(token, login()) {
                    Some(renewal) => Check::Join(token, renewal),
                    None => Check::Send(token),
                }
            }
            Phase::Due => Check::Send(token),
            Phase::Expired => Check::Wait,
        }
    }

    /// A token that may be sent now, as [`Cache::check`] decides: the current one, or the
    /// outcome of a login; and what the request waits for after its answer.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        login: LoginFn,
    ) -> Result<(Arc<Token>, After), Error> {
        let current = self.current.load_full();
        match self.check(current.as_ref(), || login.clone()) {
            Check::Send(token) => Ok((token.clone(), None)),
            Check::Join(token, renewal) => Ok((token.clone(), Some(renewal))),
            Check::Wait => self.token(login).await,
        }
    }

    /// Starts a background renewal for a token in its refresh window. Called by the one request
    /// that moved the token from `Due` to `Renewing`. Returns a future to wait for when the
    /// renewal takes up one that was abandoned with its runtime: the request waits for it, so
    /// that it runs while a runtime does.
    #[cold]
    #[inline(never)]
    pub(crate) fn renew(
        self: &Arc<Self>,
        token: &Arc<Token>,
        login: LoginFn,
    ) -> Option<BoxFuture<()>> {
        let decision = self.lock().renew(Instant::now(), token.generation);
        match decision {
            Renew::Nothing => None,
            Renew::Later(at) => {
                back_off(token, at);
                self.rearm();
                None
            }
            Renew::Start(start) => {
                let (id, taken_up) = (start.id, start.taken_up);
                let mut changes = self.subscribe();
                if let Err(error) = self.run(start, login) {
                    tracing::warn!(target: "patchworks_auth", %error, "background renewal not started");
                    return None;
                }
                let cache = self.clone();
                taken_up.then(|| -> BoxFuture<()> {
                    Box::pin(async move {
                        loop {
                            let running = cache.lock().running() == Some(id);
                            if !running {
                                return;
                            }
                            let _ = changes.changed().await;
                        }
                    })
                })
            }
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // The timer's task ends.
        self.timer.notify_one();
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
