//! [`Budget`]: one API budget per account, shared across the processes that share its token.
//!
//! Patchworks allows 240 API requests a minute per account (Growth and Professional; "starting
//! at 240" on Enterprise), login tokens and API keys alike. A fleet sharing one account shares
//! that budget: four replicas in a sync loop, or a cron job started beside a service, go over it
//! within seconds, and each process learns of it from its own 429s. With a budget the layer
//! keeps every process inside it instead:
//!
//! ```
//! use patchworks_auth::{budget::Budget, AuthLayer, Credentials};
//! use std::time::Duration;
//!
//! let layer = AuthLayer::new(Credentials::new("ops@example.com", "hunter2"))
//!     .budget(Budget::per_minute(240).max_wait(Duration::from_secs(10)));
//! ```
//!
//! - **What counts.** Every request the layer sends to Patchworks takes one unit: API calls,
//!   logins and replays after a 401. A request to another origin takes none.
//! - **The promise.** Never more than `limit` requests in any window of `per`, a sliding one,
//!   so that neither a sliding nor a fixed count on the server's side sees more. A unit is
//!   kept a [`margin`](Budget::margin) longer than `per` for its request's transit: the time
//!   its answer took, once it has one; a twentieth of `per` (at least 250 ms) before that, and
//!   for a budget shared through a [`FileStore`](crate::store::FileStore). So a long run goes
//!   at nearly `limit / per`, in one process as across a fleet on Redis. Up to `limit`
//!   requests go at once; a request over the budget waits for the oldest of the window to age
//!   out.
//! - **When.** A request takes its unit when it is sent, after any wait for its token: a
//!   request waiting for a login holds no unit, and a login waiting for a unit goes ahead of
//!   the requests queued for the budget (they need its token).
//! - **Waiting.** In arrival order, for at most [`max_wait`](Budget::max_wait) (30 s by
//!   default; a wait for a login is not counted). Past it the request fails, unsent, with an
//!   [`Error`] for which [`is_budget_exhausted`](Error::is_budget_exhausted) is `true`, which
//!   [`RetryPolicy`](crate::retry::RetryPolicy) retries. A caller that gives up while waiting
//!   gives its turn back, and a unit whose request is then never sent (the service below
//!   failed to get ready, or the caller gave up first) goes back, to a budget kept in the
//!   process or to Redis.
//! - **Shared.** With a [store](crate::store), the budget is the account's, across every
//!   process that uses the store: in Redis, a sorted set of units per account (beside the
//!   token's key, in its hash slot), each scored by when it ages out, taken by one atomic script
//!   timed by the Redis server's clock so that hosts with skewed clocks agree; in a [`FileStore`](crate::store::FileStore), a file beside the token's under an OS
//!   lock. With an [API key](crate::Credentials::api_key), which is never stored, the budget
//!   is shared under the key's hash. A unit is taken before its request is sent, so a process
//!   that crashes mid-request has spent it. If the store fails or takes more than 250 ms to
//!   answer, the process keeps its own budget (the units it took from the store included) and
//!   warns once; one request a second then asks the store again, and the first answer shares
//!   the budget again. No request fails for it, and a frozen store costs one request 250 ms a
//!   second.
//! - **A 429 pauses the account.** Its `Retry-After` (1 s without one, at most 5 minutes)
//!   pauses the budget of every process sharing it: the process that saw it sends nothing more
//!   until the pause ends, at once, and writes the pause to the store for the others (who see
//!   it one store round trip later). The 429 itself is returned as it is, for `RetryPolicy`
//!   above the layer to retry after the pause.
//! - **Seen** in a [`BudgetState`] (`budget_state()` of the layer, its services, the ready
//!   client and the reqwest middleware) and, with the `metrics` feature, in the metrics.
//!
//! `AuthLayer::https_client()` (feature `rustls`) applies `Budget::per_minute(240)` unless
//! told otherwise; a bare [`AuthLayer`](crate::AuthLayer)
//! has no budget unless given one.
//!
//! Why a sliding log and not `governor`'s GCRA: GCRA allowing a burst of `limit` lets through
//! up to `2 * limit - 1` requests in one window of `per` (the burst, then the refill), which a
//! server counting a sliding window refuses; allowing a burst of 1 keeps the promise but spaces
//! every request `per / limit` apart, so a CLI's 50 requests under 240 a minute take 12 s
//! instead of none (BENCHMARKS.md, "the budget"). The log keeps the promise exactly, lets a
//! burst through, and is the same rule in Redis, in a file and in the process, so a fallback
//! changes nothing but the sharing.

mod guards;
pub(crate) mod log;
pub(crate) mod rules;

use guards::LoginFirst;
pub(crate) use guards::{Counted, Spent};
pub(crate) use rules::Purpose;

use log::{micros, PAUSE};
use rules::{Rules, Turn};

use crate::{error::Error, store::TokenStore};
use http::{HeaderMap, StatusCode};
use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::Poll,
    time::{Duration, SystemTime},
};
use tokio::{
    sync::{Notify, Semaphore},
    time::{sleep_until, timeout, Instant},
};

// The model check (src/checks/budget_shuttle.rs, under `--cfg shuttle`) swaps the rules' lock
// for shuttle's, which explores the orders in which logins, requests and units given back take
// it.
#[cfg(all(test, shuttle))]
use shuttle::sync::{Mutex, MutexGuard};
#[cfg(not(all(test, shuttle)))]
use std::sync::{Mutex, MutexGuard};

/// The longest one budget operation on the store may take before the process goes on alone.
const STORE_DEADLINE: Duration = Duration::from_millis(250);

/// What an API budget counted in this process, without the token: read with `budget_state()`
/// on [`AuthLayer`](crate::AuthLayer), [`Auth`](crate::Auth), the ready client, or the reqwest
/// middleware. All zero for a layer without a budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetState {
    /// Requests (and logins) that waited for their turn: the window was full, or a 429 paused
    /// it. A round trip to a shared store is not a wait.
    pub waited: u64,
    /// The longest of those waits.
    pub longest_wait: Duration,
    /// How many 429s paused the budget.
    pub pauses: u64,
    /// Requests that waited the budget's `max_wait` and were not sent.
    pub refused: u64,
    /// Requests waiting for their turn right now.
    pub queued: usize,
}

/// An API budget: at most `limit` requests in any window of `per` (see the
/// [module documentation](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: u32,
    per: Duration,
    max_wait: Duration,
    margin: Option<Duration>,
}

impl Budget {
    /// The default for [`max_wait`](Self::max_wait): 30 seconds.
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

    /// At most `limit` requests in any window of `per`.
    ///
    /// A zero `limit` or `per` is kept, as the crate's [configuration rule](crate#configuration-errors)
    /// says: [`AuthLayer::budget`](crate::AuthLayer::budget) logs it as an error, and
    /// [`Auth::login`](crate::Auth::login) and every request then fail with an [`Error`] for
    /// which [`is_config`](Error::is_config) is `true`, unsent. [`try_new`](Self::try_new)
    /// refuses it at once.
    pub fn new(limit: u32, per: Duration) -> Self {
        Budget {
            limit,
            per,
            max_wait: Self::DEFAULT_MAX_WAIT,
            margin: None,
        }
    }

    /// [`new`](Self::new), refusing a budget that could never send a request.
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) is `true` when `limit` or `per`
    /// is zero.
    ///
    /// ```
    /// use patchworks_auth::budget::Budget;
    /// use std::time::Duration;
    ///
    /// assert!(Budget::try_new(240, Duration::from_secs(60)).is_ok());
    /// assert!(Budget::try_new(0, Duration::from_secs(60)).unwrap_err().is_config());
    /// ```
    pub fn try_new(limit: u32, per: Duration) -> Result<Self, Error> {
        let budget = Budget::new(limit, per);
        budget.check()?;
        Ok(budget)
    }

    /// The configuration error of a budget that could never send a request, if it is one.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.limit == 0 || self.per.is_zero() {
            return Err(Error::config(format!(
                "an API budget of {} requests per {:?} could never send one: give Budget::new a \
                 limit and a window above zero (Budget::per_minute(240) is Patchworks' own)",
                self.limit, self.per
            )));
        }
        Ok(())
    }

    /// At most `n` requests in any minute: `Budget::new(n, 60 s)`. Patchworks allows 240 on
    /// its Growth and Professional plans; an Enterprise account may allow more (ask Patchworks,
    /// then give your figure here). A zero `n` is kept as [`new`](Self::new) keeps it.
    pub fn per_minute(n: u32) -> Self {
        Budget::new(n, Duration::from_secs(60))
    }

    /// The longest a request waits for its turn before it fails with an [`Error`] for which
    /// [`is_budget_exhausted`](Error::is_budget_exhausted) is `true`. A wait for a login is not
    /// counted. Default: 30 s.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How much longer than `per` the window is kept, for the requests' transit times: a
    /// request counted at one moment reaches Patchworks a little later, and two requests'
    /// delays differ: a process's first request also opens its connection (TCP, TLS), and
    /// arrives that much later than the ones after it.
    ///
    /// Default: measured, per unit, for a budget kept in the process. A unit is kept a
    /// twentieth of `per` (at least 250 ms) longer than `per` until its request is answered,
    /// then only as long as the answer took (from the unit's take), plus a tenth and 1 ms. The
    /// answer comes after the request reached Patchworks, so that bounds its transit, on a busy
    /// machine as on a quiet one: a unit whose request was answered in 5 ms ages out about 6 ms
    /// after `per`; in Redis too, where each unit is re-dated on the server. Not measured (the
    /// twentieth kept): a budget shared through a [`FileStore`](crate::store::FileStore), and
    /// a request sent at once without waiting (a clock reading on
    /// every warm request would cost more than it wins; a full window waits on the others). A
    /// margin given here is kept for every unit.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    /// The window before any answer was timed: `per` and the given or default margin.
    fn window(&self) -> Duration {
        let margin = self
            .margin
            .unwrap_or_else(|| (self.per / 20).max(Duration::from_millis(250)));
        self.per + margin
    }
}

/// The budget as the layer keeps it: its [rules](rules) under a lock, the turnstile that keeps
/// waiters in arrival order, the store it is shared through, and what it counted. It carries
/// out what the rules decide.
pub(crate) struct Gate {
    budget: Budget,
    /// `per` and the margin.
    window: Duration,
    rules: Mutex<Rules>,
    /// Where the process's log counts its microseconds from.
    epoch: Instant,
    /// One permit: the request at the head of the queue takes it and waits for its unit;
    /// tokio's semaphore is fair, so the others queue in arrival order, and one that gives up
    /// leaves the queue.
    turnstile: Semaphore,
    shared: Option<(Arc<dyn TokenStore>, String)>,
    /// Each unit taken from the store is named, so that two processes' units never merge.
    names: AtomicU64,
    owner: String,
    /// Requests waiting for their turn now.
    queued: AtomicUsize,
    /// Woken when a login has its unit (or gave up waiting for one).
    login_served: Notify,
    /// Woken when a unit was dated earlier (its request was answered): one may be free sooner.
    redated: Notify,
    waited: AtomicU64,
    longest_wait_us: AtomicU64,
    pauses: AtomicU64,
    refused: AtomicU64,
}

impl Gate {
    pub(crate) fn new(budget: Budget, shared: Option<(Arc<dyn TokenStore>, String)>) -> Gate {
        let window = budget.window();
        let rules = Rules::new(
            budget.limit,
            budget.per,
            window,
            budget.margin.is_none(),
            shared.is_some(),
        );
        Gate {
            budget,
            window,
            epoch: Instant::now(),
            rules: Mutex::new(rules),
            turnstile: Semaphore::new(1),
            shared,
            names: AtomicU64::new(0),
            owner: crate::store::Owner::new().into_string(),
            queued: AtomicUsize::new(0),
            login_served: Notify::new(),
            redated: Notify::new(),
            waited: AtomicU64::new(0),
            longest_wait_us: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Takes one unit for a request about to be sent to Patchworks, waiting for its turn.
    ///
    /// # Errors
    ///
    /// [`Error::is_budget_exhausted`] after `max_wait` (never for a login).
    pub(crate) async fn take(self: &Arc<Self>, purpose: Purpose) -> Result<Spent, Error> {
        let unit = self.take_unit(purpose).await?;
        Ok(Spent::new(self.clone(), unit))
    }

    /// [`take`](Self::take): when the unit was dated, at the latest (the start of the try that
    /// had it).
    async fn take_unit(self: &Arc<Self>, purpose: Purpose) -> Result<Unit, Error> {
        if let Some(at) = self.take_at() {
            return Ok(Unit { at, name: None });
        }
        let (started, full) = (Instant::now(), self.lock().full());
        let wait = async {
            let _queued = Counted::new(&self.queued);
            // The semaphore is never closed.
            let _turn = self.turnstile.acquire().await;
            loop {
                if let Some(taken) = self.try_or_wait(Purpose::Request).await {
                    return taken;
                }
            }
        };
        let taken = match purpose {
            Purpose::Login => {
                // Ahead of the turnstile's queue; the requests in it wait until it is served.
                let _first = LoginFirst::new(self);
                loop {
                    if let Some(taken) = self.try_or_wait(Purpose::Login).await {
                        break taken;
                    }
                }
            }
            Purpose::Request => match timeout(self.budget.max_wait, wait).await {
                Ok(taken) => taken,
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::budget_refused();
                    return Err(Error::budget_exhausted(self.budget.max_wait));
                }
            },
        };
        // Counted only if the window was full or paused meanwhile: a store's round trip, or the
        // queue's while others ask the store, is not a wait for a turn.
        let waited = started.elapsed();
        if self.lock().full() != full {
            self.waited.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            self.longest_wait_us.fetch_max(micros, Ordering::Relaxed);
            crate::metrics::budget_wait(waited);
        }
        Ok(taken)
    }

    /// A unit now, without waiting: only a budget kept in the process, with no request queued
    /// and a unit free. What lets a request under an in-process budget take the warm path.
    pub(crate) fn take_now(self: &Arc<Self>) -> Option<Spent> {
        self.take_at()
            .map(|at| Spent::new(self.clone(), Unit { at, name: None }))
    }

    /// [`take_now`](Self::take_now): the unit's date.
    fn take_at(&self) -> Option<Instant> {
        let Ok(_turn) = self.turnstile.try_acquire() else {
            return None;
        };
        let (taken, now) = self.decide(|rules, now| rules.take_now(now));
        taken.then_some(now)
    }

    /// A decision of the rules, dated under their lock: the process's log then holds its units
    /// in the order of their dates, whatever order the threads read the clock in (a unit dated
    /// before the log's last would be taken for a clock stepped back, and every later unit
    /// dated back to it: then it could not be found to be given back or dated earlier). The
    /// decision, and its date.
    fn decide<T>(&self, decide: impl FnOnce(&mut Rules, u64) -> T) -> (T, Instant) {
        let mut rules = self.lock();
        let now = Instant::now();
        let decided = decide(&mut rules, self.at(now));
        drop(rules);
        // For the model check: a thread may be preempted between a decision and its wait.
        #[cfg(all(test, shuttle))]
        shuttle::thread::yield_now();
        (decided, now)
    }

    /// One try, dated now: the unit's date, or `None` after waiting until one may be had (a
    /// unit ages out or the pause ends, a unit is dated earlier, or the login a request waits
    /// behind is served).
    async fn try_or_wait(&self, purpose: Purpose) -> Option<Unit> {
        // Made before the decision: a `Notified` has every `notify_waiters` from its making on.
        let (redated, served) = (self.redated.notified(), self.login_served.notified());
        let (mut redated, mut served) = (std::pin::pin!(redated), std::pin::pin!(served));
        let ((turn, now), name) = self.try_take(purpose).await;
        let until = match turn {
            Turn::Unit => return Some(Unit { at: now, name }),
            Turn::Until(until) => Some(self.epoch + Duration::from_micros(until)),
            Turn::AfterLogin => None,
        };
        let mut sleep = std::pin::pin!(sleep_until(until.unwrap_or(now)));
        std::future::poll_fn(|cx| {
            use std::future::Future;
            let woken = match until {
                Some(_) => {
                    sleep.as_mut().poll(cx).is_ready() || redated.as_mut().poll(cx).is_ready()
                }
                None => served.as_mut().poll(cx).is_ready(),
            };
            if woken {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        None
    }

    /// One try, as the rules decide: from the store when they say to ask it (the process's own
    /// log when it fails), else from the process's own log. The turn and its date, and the
    /// name of a unit the store gave.
    async fn try_take(&self, purpose: Purpose) -> ((Turn, Instant), Option<u64>) {
        let (turn, asked) = self.decide(|rules, now| rules.take(now, purpose));
        if let Some(turn) = turn {
            return ((turn, asked), None);
        }
        // Only a shared budget is told to ask the store.
        let Some((store, key)) = &self.shared else {
            return (self.decide(|rules, now| rules.own(now)), None);
        };
        let name = self.names.fetch_add(1, Ordering::Relaxed);
        let named = self.name(name);
        let taken = store.take_budget(key, self.budget.limit, self.window, &named);
        match self.run("take", timeout(STORE_DEADLINE, taken).await) {
            Some(wait) => {
                let at = self.at(asked);
                let turn = self.decide(|rules, now| rules.stored(at, now, wait)).0;
                ((turn, asked), Some(name))
            }
            // Dated now: other tries may have taken units from the log since this one asked.
            None => (self.decide(|rules, now| rules.own(now)), None),
        }
    }

    /// What the store knows unit `n` of this process by.
    fn name(&self, n: u64) -> String {
        format!("{}-{n}", self.owner)
    }

    /// A store operation's outcome, or `None` (after one warning per outage) to go on alone.
    fn run<T>(
        &self,
        what: &str,
        outcome: Result<Result<T, tower::BoxError>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        let error = match outcome {
            Ok(Ok(value)) => {
                if self.lock().store_answered() {
                    tracing::info!(target: "patchworks_auth", "the budget is shared again");
                }
                return Some(value);
            }
            Ok(Err(error)) if crate::store::is_unsupported(&*error) => return None,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {STORE_DEADLINE:?}"),
        };
        if self.lock().store_failed(self.at(Instant::now())) {
            tracing::warn!(
                target: "patchworks_auth",
                operation = what,
                %error,
                "token store unavailable for the API budget: this process keeps its own until \
                 it answers"
            );
        }
        None
    }

    /// Patchworks answered 429: the budget pauses for its `Retry-After` (1 s without one, at
    /// most 5 minutes), in this process and, through the store (on a task of its own), in every
    /// process sharing it.
    pub(crate) fn too_many(self: &Arc<Self>, headers: &HeaderMap) {
        let pause = crate::challenge::retry_after(headers, SystemTime::now())
            .unwrap_or(PAUSE.0)
            .min(PAUSE.1);
        self.pauses.fetch_add(1, Ordering::Relaxed);
        crate::metrics::budget_pause();
        tracing::warn!(
            target: "patchworks_auth",
            ?pause,
            "Patchworks answered 429 Too Many Requests: the API budget pauses"
        );
        self.lock().pause(self.at(Instant::now() + pause));
        if let (Some(_), Ok(runtime)) = (&self.shared, tokio::runtime::Handle::try_current()) {
            let gate = self.clone();
            runtime.spawn(async move {
                if let Some((store, key)) = &gate.shared {
                    let paused = store.pause_budget(key, pause);
                    let _ = gate.run("pause", timeout(STORE_DEADLINE, paused).await);
                }
            });
        }
    }

    /// What the budget counted: requests that waited, the longest wait, pauses, refusals, and
    /// the requests waiting now.
    pub(crate) fn state(&self) -> BudgetState {
        BudgetState {
            waited: self.waited.load(Ordering::Relaxed),
            longest_wait: Duration::from_micros(self.longest_wait_us.load(Ordering::Relaxed)),
            pauses: self.pauses.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }

    /// A request (or login) whose unit was taken has its answer: unless the margin was given,
    /// its unit ages out that much sooner, a margin of the time it took to be answered (plus a
    /// tenth and 1 ms) instead of the default one, in the process's log or in the store (on a
    /// task of its own). A unit never answered keeps the default margin.
    pub(crate) fn answered_after(self: &Arc<Self>, unit: Unit) {
        let now = self.at(Instant::now());
        if let Some(name) = unit.name {
            let took = now.saturating_sub(self.at(unit.at));
            if self.budget.margin.is_none() {
                let sooner = self.lock().sooner(took);
                self.redate(name, sooner);
            }
        } else if self.lock().answered(self.at(unit.at), now) {
            self.redated.notify_waiters();
        }
    }

    /// A unit was not used: its request was never sent. It goes back, to the process's log or
    /// to the store.
    fn give_back(self: &Arc<Self>, unit: Unit) {
        match unit.name {
            Some(name) => self.redate(name, Some(Duration::MAX)),
            None if self.lock().give_back(self.at(unit.at)) => self.redated.notify_waiters(),
            None => {}
        }
    }

    /// Ages the store's unit `name` out `sooner`, on a task of its own; best effort (a unit
    /// not re-dated keeps the default margin).
    fn redate(self: &Arc<Self>, name: u64, sooner: Option<Duration>) {
        let (Some(sooner), Some((store, key))) = (sooner, self.shared.clone()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (gate, name) = (self.clone(), self.name(name));
        runtime.spawn(async move {
            let redated = timeout(STORE_DEADLINE, store.redate_budget(&key, &name, sooner));
            if gate.run("redate", redated.await).is_some() {
                gate.redated.notify_waiters();
            }
        });
    }

    /// `instant` on the process's log's clock.
    fn at(&self, instant: Instant) -> u64 {
        micros(instant.saturating_duration_since(self.epoch))
    }

    fn lock(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A unit taken: when it was dated (at the latest: the start of the try that had it), and the
/// name of one the store gave.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unit {
    at: Instant,
    name: Option<u64>,
}

/// Whether an answer pauses the budget.
pub(crate) fn is_too_many(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("budget", &self.budget)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
