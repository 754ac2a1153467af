//! The core's vocabulary: what it is told (a login's reason and outcome, an endpoint, the
//! timings) and what it decides (a need, a renewal, a 401's judgement, a login's end).

use super::*;

/// Why a login ran: one name in its log line (`reason=`), its metric's `reason` label and
/// [`TokenState::last_reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoginReason {
    /// No token yet: `first_use`.
    FirstUse,
    /// The token expired, or was never renewed in time: `expired`.
    Expired,
    /// The token entered its refresh window, and stayed in use meanwhile: `renewal`.
    Renewal,
    /// The API answered 401 to the token (a revocation): `unauthorized`.
    Unauthorized,
}

impl LoginReason {
    /// The reason's name in logs and metrics: `first_use`, `expired`, `renewal` or
    /// `unauthorized`.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginReason::FirstUse => "first_use",
            LoginReason::Expired => "expired",
            LoginReason::Renewal => "renewal",
            LoginReason::Unauthorized => "unauthorized",
        }
    }
}

/// A method, an origin and a path (no query): what a 401's evidence applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) method: Method,
    /// `scheme://host:port` in lower case, as [`origin`] spells it; empty for a relative URI
    /// (resolved below the layer).
    pub(crate) origin: String,
    pub(crate) path: String,
}

impl Endpoint {
    /// The endpoint of a request with `method` to `uri`.
    pub(crate) fn new(method: Method, uri: &http::Uri) -> Endpoint {
        let origin = match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => origin(scheme, host, uri.port_u16()),
            _ => String::new(),
        };
        Endpoint {
            method,
            origin,
            path: uri.path().to_owned(),
        }
    }
}

/// An origin as both adapters spell it for [`Endpoint::origin`]: the scheme and host in lower
/// case, and the port even when it is the scheme's default, so that one origin has one key.
pub(crate) fn origin(scheme: &str, host: &str, port: Option<u16>) -> String {
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let mut origin = format!("{scheme}://{host}").to_ascii_lowercase();
    if let Some(port) = port.or(default) {
        origin.push_str(&format!(":{port}"));
    }
    origin
}

/// The timings a core ages tokens and fails fast by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    /// How long before its expiry a token is renewed (capped at half its lifetime).
    pub(crate) refresh_before: Duration,
    /// The longest one login may take.
    pub(crate) login_timeout: Duration,
}

impl Timings {
    /// When a token obtained at `obtained_at` living `lifetime` is renewed, and when it stops
    /// being sent.
    ///
    /// Renewal starts `refresh_before` ahead of expiry, but never earlier than half-way through
    /// the lifetime, so a short-lived token is not renewed on every request. A token stops being
    /// sent a tenth of its lifetime (at most 5 s) before it expires, to cover the clock's
    /// resolution and the request's time in flight.
    pub(crate) fn schedule(&self, obtained_at: Instant, lifetime: Duration) -> (Instant, Instant) {
        let margin = send_margin(lifetime);
        let window = self.refresh_before.min(lifetime / 2);
        (
            obtained_at + (lifetime - window),
            obtained_at + (lifetime - margin),
        )
    }

    /// When a login that found the store's lock held by another process (which logs in, and
    /// will save its token there) looks in the store again: in 100 ms plus up to half again
    /// (`jitter` in `[0, 1)`). `None` once it has waited since `since` for two login timeouts:
    /// a lock lapses after one (its holder died) and a waiter takes it over, so a lock that
    /// never comes free is a file lock held by a hung process, and the login goes on without it.
    pub(crate) fn store_poll(&self, since: Instant, now: Instant, jitter: f64) -> Option<Instant> {
        let poll = Duration::from_millis(100).mul_f64(1.0 + 0.5 * jitter);
        (now < since + 2 * self.login_timeout).then(|| now + poll)
    }
}

/// When a process that logged in while the store was down tries the store again (to take the
/// fleet's token, or to share its own), after `failed` tries in a row that found it still
/// down: in 500 ms doubling to 30 s, plus up to half again (`jitter` in `[0, 1)`).
pub(crate) fn resync_at(now: Instant, failed: u32, jitter: f64) -> Instant {
    let every = Duration::from_millis(500).saturating_mul(1 << failed.min(6));
    now + every
        .min(Duration::from_secs(30))
        .mul_f64(1.0 + 0.5 * jitter)
}

/// How long before it expires a token of `lifetime` stops being sent: a tenth of its
/// lifetime, at most 5 s ([`Timings::schedule`]).
pub(crate) fn send_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(5))
}

/// A token a login (or a shared store) gave, before the core makes it current.
#[derive(Clone)]
pub(crate) struct Obtained {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// When the login request that obtained it was sent.
    pub(crate) obtained_at: Instant,
    /// How long it lives from `obtained_at`.
    pub(crate) lifetime: Duration,
    /// Whether it came from a shared store rather than a login of this process.
    pub(crate) shared: bool,
    /// The OAuth 2 scope it was granted (RFC 6749 §5.1: the scope asked for when the answer
    /// does not say); `None` for the other forms and a token from a store.
    pub(crate) scope: Option<std::sync::Arc<str>>,
}

impl fmt::Debug for Obtained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Obtained")
            .field("header", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .field("shared", &self.shared)
            .finish()
    }
}

/// A failed login, remembered for the back-off.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    /// No attempt before this.
    pub(crate) retry_at: Instant,
    /// Failed attempts in a row.
    pub(crate) attempts: u32,
}

/// The wait before the next attempt after `attempts` failures in a row ending with `error`,
/// plus `jitter` (a draw in `[0, 1)`) times half of it, so that a fleet restarted together does
/// not log in in lockstep. Never shorter than the back-off itself.
pub(crate) fn backoff(error: &Error, attempts: u32, jitter: f64) -> Duration {
    let (first, max) = if error.is_transient() {
        TRANSIENT_BACKOFF
    } else {
        REJECTED_BACKOFF
    };
    let base = first
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(max);
    base.mul_f64(1.0 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The login to run, as the core hands it out: the driver runs it and reports its end with
/// [`Core::login_ended`], or [`Core::abandoned`] when it is dropped unfinished.
#[derive(Clone, Debug)]
pub(crate) struct Start {
    pub(crate) id: u64,
    pub(crate) reason: Reason,
    /// The failure this login follows: its first attempt waits out that back-off.
    pub(crate) after: Option<Failure>,
    /// The token this login replaces, if any: a stored token that is the same is not newer.
    pub(super) replaces: Option<HeaderValue>,
    /// For a login after a 401: when the 401 arrived. A stored token obtained before may have
    /// been revoked with the one refused.
    pub(super) refused_at: Option<Instant>,
    /// A renewal taken up after one was abandoned with its runtime: the request that starts it
    /// waits for it too, so that it runs while a runtime does.
    pub(crate) taken_up: bool,
}

/// What a request that needs a token does next.
#[derive(Debug)]
pub(crate) enum Need {
    /// Send the current token.
    Send,
    /// Wait for login `id`, then ask again naming it.
    Wait(u64),
    /// Run this login, then wait for it like every other request.
    Start(Start),
    /// Fail: no login can succeed now (rejected credentials in their back-off, a `Retry-After`
    /// beyond the login timeout), or the login waited on failed.
    Fail(Error),
}

/// What a token in its renewal window leads to.
#[derive(Debug)]
pub(crate) enum Renew {
    /// Run the renewal.
    Start(Start),
    /// A login is already in flight; it replaces the token. Or the token is no longer current.
    Nothing,
    /// The last login failed: the token is due again at this time.
    Later(Instant),
}

/// What a 401 to a request that carried a token leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unauthorized {
    /// The 401 is returned as it is: a `Bearer` error other than `invalid_token` says the API
    /// refuses the request (a missing permission), not the token; or the token is an API key.
    Refused,
    /// The token is kept and the 401 returned as it is: the rules below take it for the API's
    /// answer to the request, not a sign of a bad token.
    Keep,
    /// The token is discarded (now, or by an earlier 401): wait for the next one (asking
    /// [`Core::need`]) and replay; `discard` says whether the current token goes now.
    Renew { discard: bool },
    /// Settle it: check the token with a `GET` to this endpoint, which answered it with a 2xx,
    /// at most once a second per token, and read the answer with [`Checked::read`].
    Check(Endpoint),
}

/// What the check of a token found ([`Unauthorized::Check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// A 2xx: the token is good, so the 401 it settles is the API's answer to its request,
    /// returned as it is.
    Good,
    /// A 401: the token was revoked ([`Core::unauthorized`] for the check's endpoint renews),
    /// and the 401 it settles is renewed and replayed.
    Revoked,
    /// Anything else: a 429, a 5xx, a redirect, no answer within the login timeout, a transport
    /// error. The check cannot tell, and the 401 it settles is taken as a revocation's (renewed
    /// and replayed), so that no caller is handed one: a login at most per check, and a check
    /// at most once a second per token.
    CannotTell,
}

impl Checked {
    /// How the check's answer reads.
    pub(crate) fn read(status: StatusCode) -> Checked {
        if status.is_success() {
            Checked::Good
        } else if status == StatusCode::UNAUTHORIZED {
            Checked::Revoked
        } else {
            Checked::CannotTell
        }
    }
}

/// The end of a login, as the core takes it.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The token is current, as generation `generation`, renewed at `renew_at` and sent until
    /// `send_by`.
    Installed {
        generation: u64,
        renew_at: Instant,
        send_by: Instant,
    },
    /// The login failed; a token still current (a failed renewal) is due again at `retry_at`.
    Failed { error: Error, retry_at: Instant },
    /// Not the login in flight (a late or duplicate report): nothing changes.
    Stale,
}
