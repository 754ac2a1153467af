//! The shared store's part in a login, written once for the login and for the resync after
//! an outage: load the fleet's token, else take the store's lock, load again, and (with a
//! token of this process's) save it and let go.

use super::*;

/// What [`Cache::load_or_lock`] found in the store.
enum Found {
    /// A token the caller takes; `true` if this process holds the lock too.
    Token(Obtained, bool),
    /// No token to take, and the lock is this process's: it logs in, then saves and lets go.
    Locked,
    /// No token to take, and another process holds the lock: it logs in.
    Busy,
}

impl Cache {
    /// Loads the store's token and returns it if `takes` it; else takes the lock for `owner`
    /// and loads once more (another process may have saved and let go since). `Err` when the
    /// store failed or ran over `budget`.
    async fn load_or_lock(
        &self,
        store: &Shared,
        refused: Option<&HeaderValue>,
        takes: impl Fn(&(Obtained, bool)) -> bool,
        owner: &Owner,
        budget: &mut Duration,
    ) -> Result<Found, ()> {
        if let Some(found) = store.load(refused, budget).await?.filter(&takes) {
            return Ok(Found::Token(found.0, false));
        }
        if !store.lock(owner, self.config.login_timeout, budget).await? {
            return Ok(Found::Busy);
        }
        Ok(match store.load(refused, budget).await {
            Ok(Some(found)) if takes(&found) => Found::Token(found.0, true),
            _ => Found::Locked,
        })
    }

    /// A token for login `start`: from the shared store if it holds one the core takes, else
    /// from a login (one for the whole fleet when the store can coordinate it). The store's
    /// operations share the login's store timeout. With the token comes the store's lock if
    /// this process took it: the token is saved and the lock let go after the callers have the
    /// token ([`Cache::settle`]).
    pub(super) async fn obtain(
        &self,
        start: &Start,
        login: &LoginFn,
    ) -> (Result<Obtained, Failure>, Option<Owner>) {
        let log_in = || self.log_in(login, start);
        let Some(store) = &self.store else {
            return (log_in().await, None);
        };
        let (refused, mut budget) = (start.replaces(), self.config.store_timeout);
        let mut spent = Duration::ZERO;
        let takes = |found: &(Obtained, bool)| {
            let now = Instant::now();
            self.lock().takes(start, &found.0, found.1, now)
        };
        let (since, owner) = (Instant::now(), Owner::new());
        let obtained = loop {
            match self
                .load_or_lock(store, refused, takes, &owner, &mut budget)
                .await
            {
                Ok(Found::Token(found, held)) => break (Ok(found), held.then_some(owner)),
                Ok(Found::Locked) => break (log_in().await, Some(owner)),
                // Another process logs in: its token will be in the store. Waiting for it is
                // bounded by the core's `store_poll`, not by this login's store timeout.
                Ok(Found::Busy) => {
                    let timings = timings(&self.config);
                    if let Some(at) = timings.store_poll(since, Instant::now(), jitter()) {
                        sleep_until(at).await;
                        spent += self.config.store_timeout.saturating_sub(budget);
                        budget = self.config.store_timeout;
                        continue;
                    }
                    tracing::warn!(
                        target: "patchworks_auth",
                        "the store's login lock outlived its lifetime: logging in without it"
                    );
                    break (log_in().await, Some(owner));
                }
                Err(()) => break (log_in().await, None),
            }
        };
        let store = spent + self.config.store_timeout.saturating_sub(budget);
        tracing::debug!(target: "patchworks_auth", ?store, "the token store's time for this login");
        obtained
    }

    /// After the callers have the token of a login (which replaced `replaces`): saves it
    /// (unless it came from the store) and lets go of the store's lock.
    pub(super) async fn settle(
        &self,
        replaces: Option<&HeaderValue>,
        owner: Owner,
        outcome: Result<Obtained, Failure>,
    ) {
        let Some(store) = &self.store else { return };
        let mut budget = self.config.store_timeout;
        if let Some(obtained) = outcome.ok().filter(|obtained| !obtained.shared) {
            let timings = timings(&self.config);
            store.save(&obtained, replaces, &timings, &mut budget).await;
        }
        store.unlock(&owner, &mut budget).await;
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
            let mut failed = 0;
            loop {
                sleep_until(resync_at(Instant::now(), failed, jitter())).await;
                let (Some(cache), Some(mine)) = (cache.upgrade(), mine.upgrade()) else {
                    return; // the layer is gone, or the token was replaced
                };
                let current = cache.current.load_full();
                if mine.phase() == Phase::Expired
                    || !current.is_some_and(|current| Arc::ptr_eq(&current, &mine))
                {
                    return;
                }
                let (Some(store), Some(lifetime)) = (&cache.store, mine.lifetime()) else {
                    return;
                };
                let (owner, mut budget) = (Owner::new(), STORE_TIMEOUT);
                let found = cache.load_or_lock(store, None, |_| true, &owner, &mut budget);
                match found.await {
                    Err(()) => failed += 1,
                    Ok(Found::Busy) => {}
                    Ok(Found::Locked) => {
                        let obtained = Obtained {
                            header: mine.header.clone(),
                            obtained_at: mine.obtained_at,
                            lifetime,
                            shared: false,
                            scope: None,
                        };
                        cache.settle(None, owner, Ok(obtained)).await;
                        tracing::info!(
                            target: "patchworks_auth",
                            "store back: shared this process's token"
                        );
                    }
                    Ok(Found::Token(shared, held)) => {
                        if held {
                            store.unlock(&owner, &mut budget).await;
                        }
                        if shared.header == mine.header || cache.adopt(&shared) {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Makes the fleet's token `shared` current, found in the store after an outage, unless it
    /// is due for renewal already. Returns whether it was adopted.
    fn adopt(self: &Arc<Self>, shared: &Obtained) -> bool {
        let mut core = self.lock();
        let (renew_at, _) = timings(&self.config).schedule(shared.obtained_at, shared.lifetime);
        if Instant::now() >= renew_at {
            return false;
        }
        if let Some((generation, renew_at, send_by)) = core.adopt(shared.clone()) {
            let token = self.install(shared, generation, renew_at, send_by);
            self.changed(&core);
            tracing::info!(
                target: "patchworks_auth",
                generation = token.generation,
                "store back: took the fleet's token"
            );
        }
        true
    }
}
