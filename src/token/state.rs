//! What the layer tells its users about its token: [`TokenState`].

use crate::error::Error;
use std::fmt;

/// What the layer knows of its token, without the token: for health checks and dashboards.
///
/// Read with [`AuthLayer::state`](crate::AuthLayer::state) or
/// [`Auth::state`](crate::Auth::state), or followed with
/// [`AuthLayer::watch`](crate::AuthLayer::watch). Its `Debug` gives times from now:
/// `TokenState { obtained: Some(12s ago), expires: Some(in 86387s), usable: true, .. }`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TokenState {
    /// When the login request of the current token was sent. `None` before the first login,
    /// after a 401 discarded the token, and for an API key.
    pub obtained_at: Option<std::time::Instant>,
    /// When the current token expires. `None` likewise; an API key never expires.
    pub expires_at: Option<std::time::Instant>,
    /// Whether a request now would go out with a token (or key) without waiting for a login.
    pub usable: bool,
    /// Logins this process ran so far, successful or not. A token taken from a shared
    /// [store](crate::store) is not a login.
    pub logins: u64,
    /// The most requests that waited on one login, counted when it answered.
    pub most_waiting: usize,
    /// Requests waiting for a login right now.
    pub waiting: usize,
    /// The last login's error, until a login succeeds.
    pub last_error: Option<Error>,
    /// Why the last login ran (it may still be running): a first use, an expiry, a renewal or a
    /// 401, by the names logs and metrics use. `None` before the first login and for an API
    /// key.
    pub last_reason: Option<super::LoginReason>,
    /// The OAuth 2 scope the current token was granted, as the token endpoint said (the scope
    /// asked for when it did not say, as RFC 6749 §5.1 has it). `None` for the other forms,
    /// without a token, and for a token taken from a shared store. A scope narrower than the one
    /// asked for is also logged at WARN, once.
    pub granted_scope: Option<String>,
    /// How many times the shared [store](crate::store) stopped answering (each outage counted
    /// once, however long it lasted). Always `0` without a store.
    pub store_outages: u64,
}

impl fmt::Debug for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// An instant as whole seconds from now.
        struct FromNow(std::time::Instant);
        impl fmt::Debug for FromNow {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let now = std::time::Instant::now();
                match self.0.checked_duration_since(now) {
                    Some(ahead) => write!(f, "in {}s", ahead.as_secs()),
                    None => write!(f, "{}s ago", now.duration_since(self.0).as_secs()),
                }
            }
        }
        f.debug_struct("TokenState")
            .field("obtained", &self.obtained_at.map(FromNow))
            .field("expires", &self.expires_at.map(FromNow))
            .field("usable", &self.usable)
            .field("logins", &self.logins)
            .field("most_waiting", &self.most_waiting)
            .field("waiting", &self.waiting)
            .field("last_error", &self.last_error)
            .field("last_reason", &self.last_reason)
            .field("granted_scope", &self.granted_scope)
            .field("store_outages", &self.store_outages)
            .finish()
    }
}
