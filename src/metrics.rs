//! What the layer records through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): logins, 401s, replays, the token's expiry and the store's operations, under the
//! names and labels in the README's "Operating it". No label carries the email, the token or a
//! URL, and nothing is recorded for a request whose token is fresh: every call here is on a
//! path that already locks the core or does I/O. Without the feature each is a no-op.

use crate::token::Reason;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A login in `form` (`email`, `username`, `client_credentials`) ended after `took` (its
/// attempts; store time excluded): `ok`, `rejected` or `error`.
pub(crate) fn login(form: &'static str, reason: Reason, outcome: &'static str, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let reason = match reason {
            Reason::FirstUse => "first_use",
            Reason::Expired => "expired",
            Reason::Renewal => "renewal",
            Reason::Unauthorized => "unauthorized",
        };
        let labels = [("form", form), ("reason", reason), ("outcome", outcome)];
        ::metrics::counter!("patchworks_auth_logins_total", &labels).increment(1);
        let outcome = [("outcome", outcome)];
        ::metrics::histogram!("patchworks_auth_login_duration_seconds", &outcome)
            .record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (form, reason, outcome, took);
}

/// The API answered 401 to a request that carried the token: `stale`, `refused` or `kept`.
pub(crate) fn unauthorized(verdict: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("patchworks_auth_unauthorized_total", "verdict" => verdict).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = verdict;
}

/// A replay after a 401 was answered: refused again or not.
pub(crate) fn replay(refused: bool) {
    #[cfg(feature = "metrics")]
    {
        let outcome = if refused { "unauthorized" } else { "ok" };
        ::metrics::counter!("patchworks_auth_replays_total", "outcome" => outcome).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = refused;
}

/// A token was installed that expires in `lifetime` from now.
pub(crate) fn expiry(lifetime: Duration) {
    let at = (SystemTime::now() + lifetime).duration_since(UNIX_EPOCH);
    #[cfg(feature = "metrics")]
    ::metrics::gauge!("patchworks_auth_token_expiry_timestamp_seconds")
        .set(at.unwrap_or_default().as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = at;
}

/// An operation on the token store: `op` is `load`, `save` or `lock`; `outcome` is `ok`,
/// `miss`, `error` or `timeout`.
pub(crate) fn store(op: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    if op != "unlock" {
        let labels = [("op", op.to_owned()), ("outcome", outcome.to_owned())];
        ::metrics::counter!("patchworks_auth_store_operations_total", &labels).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (op, outcome);
}

/// A request waited `waited` for its turn in the API budget.
pub(crate) fn budget_wait(waited: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("patchworks_auth_budget_wait_seconds").record(waited.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = waited;
}

/// A 429 paused the API budget.
pub(crate) fn budget_pause() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("patchworks_auth_budget_pauses_total").increment(1);
}

/// A request waited `max_wait` for the API budget and was not sent.
pub(crate) fn budget_refused() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("patchworks_auth_budget_refused_total").increment(1);
}
