//! The driver: carries out the [token core](crate::token)'s decisions on Tokio.
//!
//! It holds the core behind a lock that is never held across an await, the current token in an
//! `ArcSwap` for the request path, and a `watch` channel that every change of the core is
//! announced on: a request that waits for a login subscribes, then asks the core, so no change
//! between the two is missed. It runs logins (through "a function that logs in", [`LoginFn`],
//! which the adapters make) and the shared [store](crate::store), and ages tokens with timers.
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
    config::Config,
    credentials::{api_key_header, Secret},
    error::Error,
    login::LoginFn,
    store::{Owner, Shared, STORE_BUDGET},
    token::{
        Attempts, Core, Ended, Endpoint, Failure, Need, Obtained, Reason, Renew, Start, Step,
        Timings, TokenState, Unauthorized,
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
        Arc, OnceLock, Weak,
    },
    task::Poll,
    time::Duration,
};
use tokio::{
    sync::watch,
    task::AbortHandle,
    time::{sleep, sleep_until, Instant},
};
use tower::util::rng::{HasherRng, Rng};

// The model check (src/checks/driver_model.rs, a unit test under `--cfg shuttle`) swaps the
// core's lock for shuttle's, which explores the orders in which requests, logins and 401s take
// it.
#[cfg(all(test, shuttle))]
use shuttle::sync::{Mutex, MutexGuard};
#[cfg(not(all(test, shuttle)))]
use std::sync::{Mutex, MutexGuard};

/// How often a process waiting for another's login polls the store (plus up to half again).
const STORE_POLL: Duration = Duration::from_millis(100);
/// How often a process that logged in while the store was down tries to share its token again,
/// or take the fleet's (plus up to half again): every 500 ms at first, doubling to every 30 s
/// while the store stays down.
const RESYNC: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Why a request is sent again after a 401 ([`Token::authorize_again`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Again {
    Replay,
    Check,
}

/// Sends the check of a token that settles a bare 401 ([`Unauthorized::Check`]): a `GET` to
/// the endpoint's path, on the refused request's origin, with the token; resolves to whether
/// it was answered 401 (`None` if it was not answered at all). Made by each adapter, which has
/// the client to send it with.
pub(crate) type CheckFn = Box<dyn FnOnce(Endpoint, Arc<Token>) -> BoxFuture<Option<bool>> + Send>;

/// The check of one token in flight, or the last one: at most one a second per token. Its
/// answer is `None` until it has one: `Some(revoked)`, `Some(None)` if it was not answered.
struct Checking {
    generation: u64,
    started: Instant,
    answer: watch::Receiver<Option<Option<bool>>>,
}

/// The shortest time between two checks of one token.
const CHECK_EVERY: Duration = Duration::from_secs(1);

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

/// `base` plus up to half again, at random.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(1.0 + 0.5 * jitter())
}

/// Where a token is in its life, as the request path sees it. Only ever moves forward, but for
/// `Renewing` going back to `Due` when a renewal failed or was abandoned.
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

/// A token the core made current, as the request path reads it.
///
/// Its age is kept twice: a Tokio timer moves its phase forward (which a paused test clock
/// drives too), and every request compares the coarse monotonic clock with its deadlines, so a
/// timer that did not run (its runtime dropped, idle or late) never lets an expired token out.
pub(crate) struct Token {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// Counts the tokens the core made current: a 401 names the token it answered.
    pub(crate) generation: u64,
    phase: AtomicU8,
    /// When its login request was sent.
    pub(crate) obtained_at: Instant,
    /// When it expires; `None` for an API key.
    pub(crate) expires_at: Option<Instant>,
    /// On the coarse clock: when its renewal is due (the request path's one comparison), when
    /// it stops being sent, and when a failed renewal is due again.
    renew_by: Coarse,
    send_by: Coarse,
    retry_by: AtomicU64,
    /// The timer task that ages this token; aborted when the token is dropped.
    timer: OnceLock<AbortHandle>,
}

impl Token {
    fn new(obtained: &Obtained, generation: u64, deadlines: Option<(Instant, Instant)>) -> Token {
        let (now, coarse) = (Instant::now(), Coarse::now());
        let at = |deadline: Instant| coarse.after(deadline.saturating_duration_since(now));
        Token {
            header: obtained.header.clone(),
            generation,
            phase: AtomicU8::new(Phase::Fresh as u8),
            obtained_at: obtained.obtained_at,
            expires_at: deadlines.map(|_| obtained.obtained_at + obtained.lifetime),
            renew_by: deadlines.map_or(Coarse::NEVER, |(renew, _)| at(renew)),
            send_by: deadlines.map_or(Coarse::NEVER, |(_, send)| at(send)),
            retry_by: AtomicU64::new(u64::MAX),
            timer: OnceLock::new(),
        }
    }

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
    fn timer_phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Fresh,
            1 => Phase::Due,
            2 => Phase::Renewing,
            _ => Phase::Expired,
        }
    }

    /// The timer did not run (yet) but the clock says the token is due or expired, or a failed
    /// renewal may be tried again.
    #[cold]
    #[inline(never)]
    fn catch_up(&self) {
        let now = Coarse::now();
        match self.timer_phase() {
            _ if now >= self.send_by => self.phase.store(Phase::Expired as u8, Ordering::Release),
            Phase::Fresh => _ = self.advance(Phase::Fresh, Phase::Due),
            Phase::Renewing if now.nanos() >= self.retry_by.load(Ordering::Relaxed) => {
                self.retry_by.store(u64::MAX, Ordering::Relaxed);
                self.advance(Phase::Renewing, Phase::Due);
            }
            _ => {}
        }
    }

    /// Moves from `from` to `to` if the token is still in `from`; `true` for the one caller
    /// that made the move.
    pub(crate) fn advance(&self, from: Phase, to: Phase) -> bool {
        self.phase
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// How long it lives from when it was obtained; `None` for an API key.
    pub(crate) fn lifetime(&self) -> Option<Duration> {
        self.expires_at.map(|at| at - self.obtained_at)
    }

    /// Puts the token in the headers of a request sent again after a 401: a replay, or the
    /// check that settles a bare 401 ([`Unauthorized::Check`]).
    pub(crate) fn authorize_again(&self, headers: &mut HeaderMap, again: Again) {
        let what = match again {
            Again::Replay => "replaying the request that got 401 with the new token",
            Again::Check => "a bare 401 within the cool-down: checking the token with a GET",
        };
        tracing::debug!(target: "patchworks_auth", generation = self.generation, "{what}");
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

/// What a request does with the token it read; see [`Cache::check`].
pub(crate) enum Check {
    Send,
    Join(BoxFuture<()>),
    Wait,
}

/// The token cache shared by every service an [`AuthLayer`](crate::AuthLayer) makes: the core,
/// what it was built with, the current token, and the shared store if any.
pub(crate) struct Cache {
    pub(crate) config: Config,
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
}

impl Cache {
    pub(crate) fn new(mut config: Config) -> Arc<Cache> {
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
            Secret::ApiKey(key) => {
                let header = api_key_header(key);
                if header.is_none() {
                    config.scope = Err(Error::config(
                        "the API key is not a valid header value (empty, or with control \
                         characters); check the key",
                    ));
                }
                (header, None)
            }
        };
        if let Some(Some(budget)) = config.budget {
            // Login tokens and API keys share one limit: an API key's budget is shared through
            // the store too, under its hash, though the key itself is never stored.
            let shared = match (&store, &config.store, &config.credentials.secret) {
                (Some(store), ..) => Some(store.budget()),
                (None, Some(store), Secret::ApiKey(key)) => {
                    Some((store.clone(), crate::store::api_key_budget_key(key)))
                }
                _ => None,
            };
            config.gate = Some(Arc::new(crate::budget::Gate::new(budget, shared)));
        }
        let budgeted = config.gate.is_some();
        let now = Instant::now();
        let current = api_key.clone().map(|header| {
            let obtained = Obtained {
                header,
                obtained_at: now,
                lifetime: Duration::ZERO,
                shared: false,
            };
            Arc::new(Token::new(&obtained, 0, None))
        });
        Arc::new(Cache {
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
        })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The lock is never held across an await or user code, so a poisoned lock only means a
        // panic elsewhere; the core is still consistent.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current token.
    #[cfg(any(feature = "reqwest", all(test, shuttle)))]
    pub(crate) fn current(&self) -> &ArcSwapOption<Token> {
        &self.current
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
        match &self.config.gate {
            Some(gate) => gate.take(Purpose::Request).await,
            None => Ok(crate::budget::Spent::none()),
        }
    }

    /// Patchworks answered 429: the API budget pauses, if there is one.
    #[cold]
    #[inline(never)]
    pub(crate) fn throttled(&self, headers: &http::HeaderMap) {
        if let Some(gate) = &self.config.gate {
            gate.too_many(headers);
        }
    }

    /// A unit of the API budget now, without waiting (see [`Gate::take_now`]).
    ///
    /// [`Gate::take_now`]: crate::budget::Gate::take_now
    pub(crate) fn take_now(&self) -> bool {
        self.config
            .gate
            .as_ref()
            .is_some_and(|gate| gate.take_now())
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
        let state = TokenState {
            obtained_at: login.map(|token| token.obtained_at.into_std()),
            expires_at: login
                .and_then(|token| token.expires_at)
                .map(Instant::into_std),
            usable: current.is_some_and(|token| token.phase() != Phase::Expired),
            logins: self.logins.load(Ordering::Relaxed),
            most_waiting: self.most_waiting.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            last_error: core.last_error().cloned(),
            store_outages: self.store.as_ref().map_or(0, Shared::outages),
            ..TokenState::default()
        };
        match &self.config.gate {
            Some(gate) => gate.counted(state),
            None => state,
        }
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

    /// What a request does with the token it read: send it (`Check::Send`), send it and wait
    /// for the renewal it took up (`Check::Join`), or wait for a login (`Check::Wait`). The
    /// first request to see the token due starts its renewal, with the login `login` makes.
    #[inline]
    pub(crate) fn check(
        self: &Arc<Self>,
        token: &Arc<Token>,
        login: impl FnOnce() -> LoginFn,
    ) -> Check {
        match token.phase() {
            Phase::Fresh | Phase::Renewing => Check::Send,
            Phase::Due if token.advance(Phase::Due, Phase::Renewing) => {
                self.renew(token, login()).map_or(Check::Send, Check::Join)
            }
            Phase::Due => Check::Send,
            Phase::Expired => Check::Wait,
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
                retry_renewal_at(token, at);
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

    /// A request with token `generation` had an answer other than 401, with `status` and
    /// `headers`, from `endpoint` (made only if the core wants it): a 429 pauses the API budget.
    #[inline]
    pub(crate) fn answered(
        &self,
        generation: u64,
        (status, headers): (http::StatusCode, &http::HeaderMap),
        endpoint: impl FnOnce() -> Endpoint,
    ) {
        if self.wants_answers.load(Ordering::Relaxed) {
            self.report(generation, status, headers, endpoint);
        }
    }

    /// A request replayed with token `generation` after a 401 was answered with `status` and
    /// `headers`: refused again (a 401) or not; a 429 pauses the API budget. Returns whether to
    /// replay it once more: after a token taken from the store was refused, with the token
    /// [`Cache::unauthorized`] then gives.
    pub(crate) fn replayed(
        &self,
        generation: u64,
        endpoint: Endpoint,
        (status, headers): (http::StatusCode, &http::HeaderMap),
    ) -> bool {
        if crate::budget::is_too_many(status) {
            self.throttled(headers);
        }
        let refused = status == http::StatusCode::UNAUTHORIZED;
        crate::metrics::replay(refused);
        let mut core = self.lock();
        let again = core.replayed(Instant::now(), generation, endpoint, status);
        self.hint(&core);
        again
    }

    #[cold]
    #[inline(never)]
    fn report(
        &self,
        generation: u64,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        endpoint: impl FnOnce() -> Endpoint,
    ) {
        if crate::budget::is_too_many(status) {
            self.throttled(headers);
        }
        // With a budget, every answer comes here: the core's lock only if it wants answers.
        if self.config.gate.is_some() && !self.core_wants.load(Ordering::Relaxed) {
            return;
        }
        let endpoint = endpoint();
        let checkable = status.is_success() && endpoint.method == http::Method::GET;
        let mut core = self.lock();
        core.answered(Instant::now(), generation, endpoint, checkable);
        self.hint(&core);
    }

    /// Tells the request path whether the core wants answers reported (read without the lock).
    fn hint(&self, core: &Core) {
        let wants = core.wants_answers();
        self.core_wants.store(wants, Ordering::Relaxed);
        let gate = self.config.gate.is_some();
        self.wants_answers.store(wants || gate, Ordering::Relaxed);
    }

    /// The API answered 401 with `headers` to a request to `endpoint` that carried token
    /// `generation`: what the core makes of it, for every adapter. Resolves to the token to
    /// replay with, or `None` to return the 401 as it is.
    ///
    /// When the token is renewed, a request that can be replayed (`replayable`) waits for the
    /// new token and fails with the login's error if there is none; one that cannot is answered
    /// with its 401 once the login is over, whatever its outcome.
    ///
    /// A bare 401 the core wants settled ([`Unauthorized::Check`]) waits for the check `check`
    /// sends (or one in flight): answered 401, the token was revoked, and the request is renewed
    /// and replayed as above; answered otherwise (or not at all), the 401 is returned.
    pub(crate) fn unauthorized(
        self: &Arc<Self>,
        generation: u64,
        endpoint: &Endpoint,
        headers: &HeaderMap,
        replayable: bool,
        login: LoginFn,
        check: CheckFn,
    ) -> impl Future<Output = Result<Option<Arc<Token>>, Error>> + Send + 'static {
        let decision = self.judge(generation, endpoint, challenge::verdict(headers));
        let checked = match &decision {
            Unauthorized::Check(probe) => {
                Some((probe.clone(), self.checking(generation, probe, check)))
            }
            _ => None,
        };
        // A renewal starts now, before the caller polls.
        let renewal = matches!(decision, Unauthorized::Renew { .. })
            .then(|| -> BoxFuture<_> { Box::pin(self.token(login.clone())) });
        let cache = self.clone();
        async move {
            let token = match (renewal, checked) {
                (Some(renewal), _) => renewal,
                (None, Some((probe, mut answer))) => {
                    let answer = answer.wait_for(Option::is_some).await.ok().and_then(|a| *a);
                    // Revoked: the check's path answered that token before, so its 401 renews.
                    let revoked = answer.flatten() == Some(true)
                        && matches!(
                            cache.judge(generation, &probe, Verdict::Unknown),
                            Unauthorized::Renew { .. }
                        );
                    if !revoked {
                        return Ok(None);
                    }
                    Box::pin(cache.token(login))
                }
                (None, None) => return Ok(None),
            };
            match token.await {
                Ok((token, _)) if replayable => Ok(Some(token)),
                Ok(_) => Ok(None),
                Err(_) if !replayable => Ok(None),
                Err(error) => Err(error),
            }
        }
    }

    /// The check of token `generation` with a `GET` to `probe`: the one in flight, or the last
    /// one's answer if it started less than a second ago, or a new one. It runs on a task of
    /// its own, so that the 401s waiting for it may give up.
    fn checking(
        &self,
        generation: u64,
        probe: &Endpoint,
        send: CheckFn,
    ) -> watch::Receiver<Option<Option<bool>>> {
        let mut slot = self.check.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let last = slot.as_ref().filter(|check| check.generation == generation);
        let recent = |check: &&Checking| {
            check.answer.borrow().is_none() || now < check.started + CHECK_EVERY
        };
        if let Some(check) = last.filter(recent) {
            return check.answer.clone();
        }
        let started = now;
        let (answered, answer) = watch::channel(None);
        // Replaced meanwhile: the token is not current, so its 401 renews.
        match self
            .current
            .load_full()
            .filter(|t| t.generation == generation)
        {
            None => answered.send_replace(Some(Some(true))),
            Some(token) => {
                let probe = probe.clone();
                tokio::spawn(async move {
                    answered.send_replace(Some(send(probe, token).await));
                });
                None
            }
        };
        *slot = Some(Checking {
            generation,
            started,
            answer: answer.clone(),
        });
        answer
    }

    /// The core's judgement of a 401 to token `generation` (see [`Core::unauthorized`]),
    /// carried out: the token discarded if the core says so.
    pub(crate) fn judge(
        &self,
        generation: u64,
        endpoint: &Endpoint,
        verdict: Verdict,
    ) -> Unauthorized {
        let mut core = self.lock();
        let decision = core.unauthorized(Instant::now(), generation, endpoint, verdict);
        crate::metrics::unauthorized(match decision {
            Unauthorized::Renew { .. } => "stale",
            Unauthorized::Refused => "refused",
            Unauthorized::Keep => "kept",
            Unauthorized::Check(_) => "checked",
        });
        if decision == (Unauthorized::Renew { discard: true }) {
            // The core discards only the token the 401 answered, which is the current one.
            self.current.store(None);
            self.changed(&core);
            tracing::info!(
                target: "patchworks_auth",
                generation,
                "API answered 401: token discarded, logging in again"
            );
        } else {
            tracing::debug!(
                target: "patchworks_auth",
                method = %endpoint.method,
                path = %endpoint.path,
                ?verdict,
                "401 taken as the API's answer to the request: returned as is"
            );
        }
        decision
    }

    /// Runs login `start` on the current Tokio runtime under a [`Claim`]; it runs to its end
    /// even if every request waiting on it is dropped, and is handed back if its runtime goes.
    fn run(self: &Arc<Self>, start: Start, login: LoginFn) -> Result<After, Error> {
        let claim = self.claim(&start);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config("a login needs a Tokio runtime; call the service from within one")
        })?;
        let reason = start.reason;
        let span = tracing::info_span!(
            target: "patchworks_auth",
            "patchworks_login",
            reason = reason.as_str(),
            form = self.config.credentials.form_name(),
            login_host = self.config.login_url.host().unwrap_or_default(),
        );
        let (settled, saved) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(tracing::Instrument::instrument(
            async move {
                tracing::debug!(target: "patchworks_auth", "login started");
                let cache = claim.cache.clone();
                let (outcome, lock) = cache.obtain(&start, &login).await;
                claim.finish(reason, outcome.clone());
                if let Some(owner) = lock {
                    cache.settle(&start, owner, outcome).await;
                }
                drop(settled);
            },
            span,
        ));
        // With a store, the request that started the login waits after its answer for the token
        // to be saved: a process that exits right after its request still shares its login.
        let saved: BoxFuture<()> = Box::pin(async move { _ = saved.await });
        Ok(self.store.is_some().then_some(saved))
    }

    /// The claim on login `start`, which the core put in flight.
    pub(crate) fn claim(self: &Arc<Self>, start: &Start) -> Claim {
        Claim {
            cache: self.clone(),
            id: start.id,
            began: Instant::now(),
            done: false,
        }
    }

    /// A token for login `start`: from the shared store if it holds one the core takes, else
    /// from a login (one for the whole fleet when the store can coordinate it). The store's
    /// operations share the login's store budget. With the token comes the store's lock if this
    /// process took it: the token is saved and the lock let go after the callers have the token.
    async fn obtain(
        &self,
        start: &Start,
        login: &LoginFn,
    ) -> (Result<Obtained, Failure>, Option<Owner>) {
        let log_in = || self.log_in(login, start);
        let Some(store) = &self.store else {
            return (log_in().await, None);
        };
        let (refused, mut budget) = (start.replaces(), self.config.store_budget);
        let mut spent = Duration::ZERO;
        let takes = |found: &(Obtained, bool)| {
            let now = Instant::now();
            self.lock().takes(start, &found.0, found.1, now)
        };
        // A lock lapses after its lifetime (the login timeout) and a waiter takes it over, so a
        // holder that died delays the others by that much. A waiter gives up and logs in by
        // itself only after the lifetime and one more login (its new holder's) have passed:
        // when the lock never comes free (a file lock held by a hung process).
        let wait_until = Instant::now() + 2 * self.config.login_timeout;
        let owner = Owner::new();
        let obtained = loop {
            match store.load(refused, &mut budget).await {
                Ok(Some(found)) if takes(&found) => break (Ok(found.0), None),
                Ok(_) => {}
                Err(()) => break (log_in().await, None),
            }
            match store
                .lock(&owner, self.config.login_timeout, &mut budget)
                .await
            {
                Ok(true) => {
                    // Taken: another process may have saved and let go since the load.
                    let outcome = match store.load(refused, &mut budget).await {
                        Ok(Some(found)) if takes(&found) => Ok(found.0),
                        _ => log_in().await,
                    };
                    break (outcome, Some(owner));
                }
                // Another process logs in: its token will be in the store. Waiting for it is
                // bounded by `wait_until`, not by this login's store budget.
                Ok(false) if Instant::now() < wait_until => {
                    sleep(jittered(STORE_POLL)).await;
                    spent += self.config.store_budget.saturating_sub(budget);
                    budget = self.config.store_budget;
                }
                Ok(false) => {
                    tracing::warn!(
                        target: "patchworks_auth",
                        "the store's login lock outlived its lifetime: logging in without it"
                    );
                    break (log_in().await, Some(owner));
                }
                Err(()) => break (log_in().await, None),
            }
        };
        let store = spent + self.config.store_budget.saturating_sub(budget);
        tracing::debug!(target: "patchworks_auth", ?store, "the token store's time for this login");
        obtained
    }

    /// After the callers have the token of login `start`: saves it (unless it came from the
    /// store) and lets go of the store's lock.
    async fn settle(&self, start: &Start, owner: Owner, outcome: Result<Obtained, Failure>) {
        let Some(store) = &self.store else { return };
        let mut budget = self.config.store_budget;
        if let Some(obtained) = outcome.ok().filter(|obtained| !obtained.shared) {
            let timings = timings(&self.config);
            store
                .save(&obtained, start.replaces(), &timings, &mut budget)
                .await;
        }
        store.unlock(&owner, &mut budget).await;
    }

    /// One login: attempts through `login` as the core's [`Attempts`] decides, until one
    /// succeeds, one fails in a way that needs a fix, or the login timeout runs out. No attempt
    /// is cut before then; a slow one gets a second beside it, and the first good answer wins.
    async fn log_in(&self, login: &LoginFn, start: &Start) -> Result<Obtained, Failure> {
        self.logins.fetch_add(1, Ordering::Relaxed);
        let began = Instant::now();
        let outcome = self.attempts(login, start.after.clone()).await;
        let took = began.elapsed();
        let label = match &outcome {
            Ok(_) => "ok",
            Err(failure) if failure.error.is_rejected() => "rejected",
            Err(_) => "error",
        };
        // The outcome is logged once, by `Claim::finish`, with the generation the core gives it.
        let form = self.config.credentials.form_name();
        crate::metrics::login(form, start.reason, label, took);
        outcome
    }

    /// The attempts of one login, as [`Attempts`] decides.
    async fn attempts(&self, login: &LoginFn, after: Option<Failure>) -> Result<Obtained, Failure> {
        let timings = timings(&self.config);
        let mut attempts = Attempts::new(&timings, Instant::now(), after);
        let mut flying: Vec<(u32, BoxFuture<Result<Obtained, Error>>)> = Vec::with_capacity(2);
        loop {
            let until = match attempts.step(Instant::now()) {
                Step::Start(id) => {
                    flying.push((id, login()));
                    continue;
                }
                Step::Fail(failure) => return Err(failure),
                Step::Wait(until) => until,
            };
            let mut timer = pin!(sleep_until(until));
            let answer = poll_fn(|cx| {
                for i in 0..flying.len() {
                    if let Poll::Ready(answer) = flying[i].1.as_mut().poll(cx) {
                        return Poll::Ready(Some((flying.swap_remove(i).0, answer)));
                    }
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await;
            match answer {
                Some((_, Ok(obtained))) => return Ok(obtained),
                Some((id, Err(error))) => attempts.failed(id, Instant::now(), error, jitter()),
                None => {}
            }
        }
    }

    /// Ages a token on Tokio's clock (see [`age`]).
    fn keep_aged(&self, token: &Arc<Token>, renew_at: Instant, send_by: Instant) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let timer = runtime.spawn(age(Arc::downgrade(token), renew_at, send_by));
            let _ = token.timer.set(timer.abort_handle());
        }
    }

    /// Makes `obtained` current as the core's `generation`, aged until `send_by`.
    fn install(
        &self,
        obtained: &Obtained,
        generation: u64,
        renew_at: Instant,
        send_by: Instant,
    ) -> Arc<Token> {
        let token = Arc::new(Token::new(obtained, generation, Some((renew_at, send_by))));
        crate::metrics::expiry(
            obtained
                .lifetime
                .saturating_sub(obtained.obtained_at.elapsed()),
        );
        self.current.store(Some(token.clone()));
        self.keep_aged(&token, renew_at, send_by);
        token
    }

    /// After a login made while the store was down: until the token expires, tries now and
    /// then to take the fleet's token from the store, or to share this one, so that the fleet
    /// converges on one token again without a login once the store is back.
    fn resync(self: &Arc<Self>, token: &Arc<Token>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cache, mine) = (Arc::downgrade(self), Arc::downgrade(token));
        runtime.spawn(async move {
            let owner = Owner::new();
            let mut every = RESYNC.0;
            loop {
                sleep(jittered(every)).await;
                let mut budget = STORE_BUDGET;
                let (Some(cache), Some(mine)) = (cache.upgrade(), mine.upgrade()) else {
                    return; // the layer is gone, or the token was replaced
                };
                let current = cache.current.load_full();
                if mine.phase() == Phase::Expired
                    || !current.is_some_and(|current| Arc::ptr_eq(&current, &mine))
                {
                    return;
                }
                let Some(store) = &cache.store else { return };
                match store.load(None, &mut budget).await {
                    Err(()) => {
                        every = (every * 2).min(RESYNC.1);
                        continue;
                    }
                    Ok(Some((shared, _))) if shared.header == mine.header => return,
                    Ok(Some((shared, _))) => {
                        let mut core = cache.lock();
                        let (renew_at, _) =
                            timings(&cache.config).schedule(shared.obtained_at, shared.lifetime);
                        if Instant::now() >= renew_at {
                            continue;
                        }
                        if let Some((generation, renew_at, send_by)) = core.adopt(shared.clone()) {
                            let token = cache.install(&shared, generation, renew_at, send_by);
                            cache.changed(&core);
                            tracing::info!(
                                target: "patchworks_auth",
                                generation = token.generation,
                                "store back: took the fleet's token"
                            );
                        }
                        return;
                    }
                    Ok(None) => {
                        let Some(lifetime) = mine.lifetime() else {
                            return;
                        };
                        let ttl = cache.config.login_timeout;
                        if store.lock(&owner, ttl, &mut budget).await == Ok(true) {
                            if let Ok(None) = store.load(None, &mut budget).await {
                                let obtained = Obtained {
                                    header: mine.header.clone(),
                                    obtained_at: mine.obtained_at,
                                    lifetime,
                                    shared: false,
                                };
                                let timings = timings(&cache.config);
                                store.save(&obtained, None, &timings, &mut budget).await;
                                tracing::info!(
                                    target: "patchworks_auth",
                                    "store back: shared this process's token"
                                );
                            }
                            store.unlock(&owner, &mut budget).await;
                        }
                    }
                }
            }
        });
    }
}

/// The right to run one login, and the duty to report it: dropped unfinished (with its task,
/// its future or its runtime), it hands the login back to the core.
pub(crate) struct Claim {
    cache: Arc<Cache>,
    id: u64,
    /// When the login was claimed: its log line says how long it took, store time included.
    began: Instant,
    done: bool,
}

impl Claim {
    /// Reports the login's outcome: the new token becomes current, or the failure is kept for
    /// the back-off; every request that waited wakes.
    pub(crate) fn finish(mut self, reason: Reason, outcome: Result<Obtained, Failure>) {
        self.done = true;
        let cache = &self.cache;
        let mut core = cache.lock();
        let ended = core.login_ended(self.id, Instant::now(), outcome.clone());
        let installed = match (&ended, outcome) {
            (
                Ended::Installed {
                    generation,
                    renew_at,
                    send_by,
                },
                Ok(obtained),
            ) => {
                let token = cache.install(&obtained, *generation, *renew_at, *send_by);
                Some((token, obtained.shared))
            }
            // A failed background renewal: the token stays in use until it expires, and
            // renewal is tried again after the back-off.
            (Ended::Failed { retry_at, .. }, _) => {
                if let Some(token) = cache.current.load_full() {
                    retry_renewal_at(&token, *retry_at);
                }
                None
            }
            _ => None,
        };
        cache.changed(&core);
        drop(core);
        let waiting = cache.waiting.load(Ordering::Relaxed);
        cache.most_waiting.fetch_max(waiting, Ordering::Relaxed);
        match (installed, ended) {
            (Some((token, true)), _) => tracing::info!(
                target: "patchworks_auth",
                generation = token.generation,
                "took the fleet's token from the store"
            ),
            (Some((token, false)), _) => {
                tracing::info!(
                    target: "patchworks_auth",
                    generation = token.generation,
                    lifetime = ?token.lifetime(),
                    took = ?self.began.elapsed(),
                    "logged in to Patchworks"
                );
                if cache.store.as_ref().is_some_and(Shared::is_down) {
                    cache.resync(&token);
                }
            }
            (None, Ended::Failed { error, retry_at }) => tracing::warn!(
                target: "patchworks_auth",
                reason = reason.as_str(),
                retry_in = ?retry_at.saturating_duration_since(Instant::now()),
                took = ?self.began.elapsed(),
                %error,
                "Patchworks login failed"
            ),
            _ => {}
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut core = self.cache.lock();
        if core.abandoned(self.id) {
            // A renewal: the token is due again, and the next request takes it up.
            if let Some(token) = self.cache.current.load_full() {
                token.advance(Phase::Renewing, Phase::Due);
            }
        }
        self.cache.changed(&core);
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

/// Moves a token whose renewal failed back to `Due` once the back-off ends: by a timer, and by
/// the coarse clock on the request path for when the timer's runtime is gone.
fn retry_renewal_at(token: &Arc<Token>, at: Instant) {
    if token.timer_phase() != Phase::Renewing {
        return;
    }
    let coarse = Coarse::now().after(at.saturating_duration_since(Instant::now()));
    token.retry_by.store(coarse.nanos(), Ordering::Relaxed);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let token = Arc::downgrade(token);
        runtime.spawn(async move {
            sleep_until(at).await;
            if let Some(token) = token.upgrade() {
                token.advance(Phase::Renewing, Phase::Due);
            }
        });
    }
}

/// Ages a token on Tokio's clock: due for renewal at `renew_at`, expired at `send_by`.
///
/// If the task is dropped before that (its runtime shut down while the token lives on, say in a
/// client shared between runtimes), the token is aged by the coarse clock alone: it stays usable
/// for as long as it is valid.
async fn age(token: Weak<Token>, renew_at: Instant, send_by: Instant) {
    if renew_at < send_by {
        sleep_until(renew_at).await;
        match token.upgrade() {
            Some(token) => token.advance(Phase::Fresh, Phase::Due),
            None => return,
        };
    }
    sleep_until(send_by).await;
    if let Some(token) = token.upgrade() {
        token.phase.store(Phase::Expired as u8, Ordering::Release);
    }
}
