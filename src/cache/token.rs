//! The token as the request path reads it, and its aging on Tokio's clock.

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
/// Its age is kept twice: a Tokio timer moves its phase forward (which a paused test clock
/// drives too), and every request compares the coarse monotonic clock with its deadlines, so a
/// timer that did not run (its runtime dropped, idle or late) never lets an expired token out.
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
    /// The timer task that ages this token; aborted when the token is dropped.
    pub(super) timer: OnceLock<AbortHandle>,
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
            timer: OnceLock::new(),
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

/// Moves a token whose renewal failed back to `Due` once the back-off ends: by a timer, and by
/// the coarse clock on the request path for when the timer's runtime is gone.
pub(super) fn retry_renewal_at(token: &Arc<Token>, at: Instant) {
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
pub(super) async fn age(token: Weak<Token>, renew_at: Instant, send_by: Instant) {
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
