//! Logins run under a [`Claim`], their attempts, and the token installed.

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
                    cache.settle(start.replaces(), owner, outcome).await;
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

    /// Makes `obtained` current as the core's `generation`, aged until `send_by` by the
    /// driver's timer.
    pub(super) fn install(
        self: &Arc<Self>,
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
        self.rearm();
        token
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
                    back_off(&token, *retry_at);
                }
                cache.rearm();
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
