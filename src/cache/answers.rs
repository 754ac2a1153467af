//! The answers requests report to the core, and a 401's judgement carried out: the token
//! discarded, a renewal, or the check that settles a bare 401.

use super::*;

/// Why a request is sent again after a 401 ([`Token::authorize_again`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Again {
    Replay,
    Check,
}

/// Sends the check of a token that settles a bare 401 ([`Unauthorized::Check`]): a `GET` to
/// the endpoint's path, on the refused request's origin, with the token; resolves to what it
/// found. Made by [`Cache::check_fn`] for each adapter, which has the client to send it with.
pub(crate) type CheckFn = Box<dyn FnOnce(Endpoint, Arc<Token>) -> BoxFuture<Checked> + Send>;

/// The check of one token in flight, or the last one: at most one a second per token. Its
/// answer is `None` until it has one.
pub(super) struct Checking {
    generation: u64,
    answer: watch::Receiver<Option<Checked>>,
    /// Its task, ended at the check's deadline ([`Due::Check`]).
    task: Option<tokio::task::AbortHandle>,
}

/// Where a check's answer goes: if its task ends without one (at its deadline, or with its
/// runtime), the check cannot tell.
struct Answer(watch::Sender<Option<Checked>>);

impl Drop for Answer {
    fn drop(&mut self) {
        self.0.send_if_modified(|answer| {
            let unanswered = answer.is_none();
            answer.get_or_insert(Checked::CannotTell);
            unanswered
        });
    }
}

impl Cache {
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
    pub(super) fn report(
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
        if self.gate.is_some() && !self.core_wants.load(Ordering::Relaxed) {
            return;
        }
        let endpoint = endpoint();
        let checkable = status.is_success() && endpoint.method == http::Method::GET;
        let mut core = self.lock();
        core.answered(Instant::now(), generation, endpoint, checkable);
        self.hint(&core);
    }

    /// Tells the request path whether the core wants answers reported (read without the lock).
    pub(super) fn hint(&self, core: &Core) {
        let wants = core.wants_answers();
        self.core_wants.store(wants, Ordering::Relaxed);
        let gate = self.gate.is_some();
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
    /// sends (or one in flight): a 2xx, and the 401 is returned; a 401, or an answer that cannot
    /// tell ([`Checked`]), and the request is renewed and replayed as above.
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
                    // A check whose task is gone (its runtime shut down) told nothing.
                    let answer = answer.wait_for(Option::is_some).await.ok().and_then(|a| *a);
                    if answer.unwrap_or(Checked::CannotTell) == Checked::Good {
                        return Ok(None);
                    }
                    // Revoked (or it cannot tell): the check's path answered that token
                    // before, so its 401 renews.
                    let renew = cache.judge(generation, &probe, Verdict::Unknown);
                    if !matches!(renew, Unauthorized::Renew { .. }) {
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
    /// one's answer if it started less than a second ago, or a new one, as the core decides
    /// ([`Core::check_due`]). It runs on a task of its own, so that the 401s waiting for it may
    /// give up.
    pub(super) fn checking(
        self: &Arc<Self>,
        generation: u64,
        probe: &Endpoint,
        send: CheckFn,
    ) -> watch::Receiver<Option<Checked>> {
        let mut slot = self.check.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let last = slot.as_ref().filter(|check| check.generation == generation);
        if let Some(check) = last.filter(|_| !self.lock().check_due(generation, now)) {
            return check.answer.clone();
        }
        let (answered, answer) = watch::channel(None);
        // Replaced meanwhile: the token is not current, so its 401 renews.
        let task = match self
            .current
            .load_full()
            .filter(|t| t.generation == generation)
        {
            None => {
                answered.send_replace(Some(Checked::Revoked));
                None
            }
            Some(token) => {
                let (probe, answered) = (probe.clone(), Answer(answered));
                // Its deadline is the core's, which the driver's timer keeps.
                self.lock().check_started(generation, now);
                let cache = Arc::downgrade(self);
                let task = tokio::spawn(async move {
                    answered.0.send_replace(Some(send(probe, token).await));
                    if let Some(cache) = cache.upgrade() {
                        cache.lock().check_ended(generation);
                    }
                });
                Some(task.abort_handle())
            }
        };
        *slot = Some(Checking {
            generation,
            answer: answer.clone(),
            task,
        });
        drop(slot);
        self.rearm();
        answer
    }

    /// The check of token `generation` did not answer by its deadline: its task ends, and it
    /// cannot tell ([`Answer`]).
    pub(super) fn check_timed_out(&self, generation: u64) {
        let slot = self.check.lock().unwrap_or_else(|e| e.into_inner());
        let check = slot.as_ref().filter(|check| check.generation == generation);
        if let Some(task) = check.and_then(|check| check.task.as_ref()) {
            task.abort();
        }
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
}
