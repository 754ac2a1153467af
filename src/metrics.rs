//! What the layer records through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): logins, 401s, replays, the token's expiry and the store's operations, under the
//! names and labels in the README's "Operating it". No label carries the email, the token or a
//! URL, and nothing is recorded for a request whose token is fresh: every call here is on a
//! path that already locks the core or does I/O. Without the feature each is a no-op.

use crate::token::Reason;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every label value the layer records, by metric and label. The README's "Operating it" table
/// lists the same (a unit test holds the two together), and a value recorded that is not here
/// fails the test that recorded it.
#[cfg(any(test, feature = "metrics"))]
pub(crate) const VOCABULARY: &[(&str, &str, &[&str])] = &[
    (LOGINS, "form", &["email", "username", "client_credentials"]),
    (
        LOGINS,
        "reason",
        &["first_use", "expired", "renewal", "unauthorized"],
    ),
    (LOGINS, "outcome", &["ok", "rejected", "error"]),
    (LOGIN_DURATION, "outcome", &["ok", "rejected", "error"]),
    (
        UNAUTHORIZED,
        "verdict",
        &["stale", "refused", "kept", "checked"],
    ),
    (REPLAYS, "outcome", &["ok", "unauthorized"]),
    (STORE, "op", &["load", "save", "lock"]),
    (STORE, "outcome", &["ok", "miss", "error", "timeout"]),
];

#[cfg(any(test, feature = "metrics"))]
const LOGINS: &str = "patchworks_auth_logins_total";
#[cfg(any(test, feature = "metrics"))]
const LOGIN_DURATION: &str = "patchworks_auth_login_duration_seconds";
#[cfg(any(test, feature = "metrics"))]
const UNAUTHORIZED: &str = "patchworks_auth_unauthorized_total";
#[cfg(any(test, feature = "metrics"))]
const REPLAYS: &str = "patchworks_auth_replays_total";
#[cfg(any(test, feature = "metrics"))]
const STORE: &str = "patchworks_auth_store_operations_total";

/// Whether `value` is one of [`VOCABULARY`]'s for `metric`'s `label`.
#[cfg(feature = "metrics")]
fn documented(metric: &str, label: &str, value: &str) -> bool {
    VOCABULARY
        .iter()
        .any(|(m, l, values)| *m == metric && *l == label && values.contains(&value))
}

/// A login in `form` (`email`, `username`, `client_credentials`) ended after `took` (its
/// attempts; store time excluded): `ok`, `rejected` or `error`.
pub(crate) fn login(form: &'static str, reason: Reason, outcome: &'static str, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let reason = reason.as_str();
        let labels = [("form", form), ("reason", reason), ("outcome", outcome)];
        debug_assert!(labels.iter().all(|(l, v)| documented(LOGINS, l, v)));
        ::metrics::counter!(LOGINS, &labels).increment(1);
        let outcome = [("outcome", outcome)];
        ::metrics::histogram!(LOGIN_DURATION, &outcome).record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (form, reason, outcome, took);
}

/// The API answered 401 to a request that carried the token: `stale`, `refused` or `kept`.
pub(crate) fn unauthorized(verdict: &'static str) {
    #[cfg(feature = "metrics")]
    {
        debug_assert!(documented(UNAUTHORIZED, "verdict", verdict), "{verdict}");
        ::metrics::counter!(UNAUTHORIZED, "verdict" => verdict).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = verdict;
}

/// A replay after a 401 was answered: refused again or not.
pub(crate) fn replay(refused: bool) {
    #[cfg(feature = "metrics")]
    {
        let outcome = if refused { "unauthorized" } else { "ok" };
        ::metrics::counter!(REPLAYS, "outcome" => outcome).increment(1);
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
        debug_assert!(documented(STORE, "op", op) && documented(STORE, "outcome", outcome));
        let labels = [("op", op.to_owned()), ("outcome", outcome.to_owned())];
        ::metrics::counter!(STORE, &labels).increment(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's "Operating it" table, as (metric, label, values): each row's first cell is
    /// the metric, its third holds `label` = `value` \| `value` ..., `;` between labels.
    fn readme_table() -> Vec<(String, String, Vec<String>)> {
        let readme = include_str!("../README.md");
        let section = readme.split("## Operating it").nth(1).expect("the section");
        let ticked = |text: &str| -> Vec<String> {
            text.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let mut table = Vec::new();
        for row in section.lines().take_while(|line| !line.starts_with("## ")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            if !row.starts_with("| `patchworks_auth_") || cells.len() < 3 {
                continue;
            }
            let metric = ticked(cells[0]).remove(0);
            for label in cells[2].split(';').filter(|part| part.contains('`')) {
                let mut words = ticked(label);
                let name = words.remove(0);
                table.push((metric.clone(), name, words));
            }
        }
        table
    }

    #[test]
    fn every_label_value_is_in_the_readme_and_no_other() {
        let mut readme = readme_table();
        readme.sort();
        let mut code: Vec<_> = VOCABULARY
            .iter()
            .map(|(m, l, values)| {
                let values = values.iter().map(|v| (*v).to_owned()).collect();
                ((*m).to_owned(), (*l).to_owned(), values)
            })
            .collect();
        code.sort();
        assert_eq!(readme, code);
    }
}
