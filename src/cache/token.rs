//! The token as the request path reads it, and the driver's one timer, which ages it when the
//! core says.

use super::*;

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
/// Its age is kept twice: the driver's timer moves its phase forward when the core's deadlines
/// pass ([`Cache::rearm`]; a paused test clock drives it too), and every request compares the
/// coarse monotonic clock with its deadlines, so a timer that did not run (its runtime dropped,
/// idle or late) never lets an expired token out.
pub(crate) struct Token {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// Counts the tokens the core made current: a 401 names the token it answered.
    pub(crate) generation: u64,
    pub(super) phase: AtomicU8,
    /// When its login request was sent.
    pub(crate) obtained_at: Instant,
    /// When it expires; `None` for an API key.
    pub(crate) expires_at: Option<Instant>,
    /// On the coarse clock: when its renewal is due (the request path's one comparison), when
    /// it stops being sent, and when a failed renewal is due again.
    pub(super) renew_by: Coarse,
    pub(super) send_by: Coarse,
    pub(super) retry_by: AtomicU64,
    /// The OAuth 2 scope it was granted, if known.
    pub(super) scope: Option<Arc<str>>,
}

impl Token {
    pub(super) fn new(
        obtained: &Obtained,
        generation: u64,
        deadlines: Option<(Instant, Instant)>,
    ) -> Token {
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
            scope: obtained.scope.clone(),
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
    pub(super) fn timer_phase(&self) -> Phase {
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
    pub(super) fn catch_up(&self) {
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

/// A renewal of `token` failed, or may not start yet: it is due again at `at`, by the
/// driver's timer (the core's deadline) and by the coarse clock on the request path for when
/// the timer's runtime is gone.
pub(super) fn back_off(token: &Token, at: Instant) {
    let coarse = Coarse::now().after(at.saturating_duration_since(Instant::now()));
    token.retry_by.store(coarse.nanos(), Ordering::Relaxed);
}

impl Cache {
    /// Has the driver's one timer ask the core again when it next needs to run
    /// ([`Core::poll_timeout`]): after a token is made current, or a renewal backs off. Starts
    /// the timer on this runtime if none runs (none yet, or its runtime went).
    pub(super) fn rearm(self: &Arc<Self>) {
        let mut task = self.timer_task.lock().unwrap_or_else(|e| e.into_inner());
        if task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
        {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let wake = self.timer.clone();
                *task = Some(runtime.spawn(drive(Arc::downgrade(self), wake)));
            }
        }
        self.timer.notify_one();
    }

    /// Carries out what came due at `now` ([`Core::timeout`]): on the current token, or on the
    /// check in flight.
    fn timed_out(&self, now: Instant) {
        let dues: Vec<Due> = {
            let mut core = self.lock();
            std::iter::from_fn(|| core.timeout(now)).collect()
        };
        for due in dues {
            if let Due::Check(generation) = due {
                self.check_timed_out(generation);
                continue;
            }
            let current = self.current.load_full();
            let Some(token) = current.filter(|token| token.generation == due.generation()) else {
                continue;
            };
            match due {
                Due::Renewal(_) => _ = token.advance(Phase::Fresh, Phase::Due),
                Due::Retry(_) => {
                    token.retry_by.store(u64::MAX, Ordering::Relaxed);
                    token.advance(Phase::Renewing, Phase::Due);
                }
                Due::Expired(_) => token.phase.store(Phase::Expired as u8, Ordering::Release),
                Due::Check(_) => {}
            }
        }
    }
}

/// The driver's one timer: sleeps until the core's next deadline, or until woken because the
/// deadlines changed ([`Cache::rearm`]), and carries out what came due. Ends once the cache is
/// gone (its drop wakes it).
async fn drive(cache: Weak<Cache>, wake: Arc<Notify>) {
    loop {
        let deadline = match cache.upgrade() {
            Some(cache) => cache.lock().poll_timeout(),
            None => return,
        };
        let mut notified = pin!(wake.notified());
        let mut sleep = pin!(deadline.map(sleep_until));
        poll_fn(|cx| {
            let timed_out = match sleep.as_mut().as_pin_mut() {
                Some(sleep) => sleep.poll(cx).is_ready(),
                None => false,
            };
            if timed_out || notified.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        match cache.upgrade() {
            Some(cache) => cache.timed_out(Instant::now()),
            None => return,
        }
    }
}
