//! Logins run under a [`Claim`], the shared store's part in them, and the token installed.

use super::*;

impl Cache {
    /// Runs login `start` on the current Tokio runtime under a [`Claim`]; it runs to its end
    /// even if every request waiting on it is dropped, and is handed back if its runtime goes.
    pub(super) fn run(self: &Arc<Self>, start: Start, login: LoginFn) -> Result<After, Error> {
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
    pub(super) async fn obtain(
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
    pub(super) async fn settle(
        &self,
        start: &Start,
        owner: Owner,
        outcome: Result<Obtained, Failure>,
    ) {
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
    pub(super) async fn log_in(&self, login: &LoginFn, start: &Start) -> Result<Obtained, Failure> {
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
    pub(super) async fn attempts(
        &self,
        login: &LoginFn,
        after: Option<Failure>,
    ) -> Result<Obtained, Failure> {
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
    pub(super) fn keep_aged(&self, token: &Arc<Token>, renew_at: Instant, send_by: Instant) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let timer = runtime.spawn(age(Arc::downgrade(token), renew_at, send_by));
            let _ = token.timer.set(timer.abort_handle());
        }
    }

    /// Makes `obtained` current as the core's `generation`, aged until `send_by`.
    pub(super) fn install(
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
    pub(super) fn resync(self: &Arc<Self>, token: &Arc<Token>) {
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
