//! The error type of the layer's own failures.

use http::StatusCode;
use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

/// A failure of [`AuthLayer`](crate::AuthLayer) itself: the login, its answer, or the
/// layer's configuration.
///
/// The service's error type is [`tower::BoxError`]; errors of the wrapped service pass through
/// it unchanged, and the layer's own failures are this type, which callers get back with
/// `downcast_ref`:
///
/// ```
/// use patchworks_auth::Error;
///
/// fn explain(err: &tower::BoxError) -> &'static str {
///     match err.downcast_ref::<Error>() {
///         Some(e) if e.is_rejected() => "fix the credentials",
///         Some(e) if e.is_timeout() => "the login endpoint is slow or unreachable",
///         Some(_) => "the Patchworks login failed",
///         None => "the request itself failed",
///     }
/// }
/// # let err: tower::BoxError = "connection reset".into();
/// # assert_eq!(explain(&err), "the request itself failed");
/// ```
///
/// An `Error` is cheap to clone: every request that waited on one failed login gets a clone of
/// the same error. Its `Display` says what happened and what to do; neither `Display` nor
/// `Debug` ever shows the password or the token.
#[derive(Clone)]
pub struct Error {
    kind: Kind,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The login endpoint refused the credentials (401, 403 or 422); `true` if they came from
    /// the environment.
    Rejected(StatusCode, bool),
    /// The login endpoint answered another non-success status, perhaps with a `Retry-After`.
    Status(StatusCode, Option<Duration>),
    /// The login was answered by a redirect (its status), or its answer came from another URI
    /// than the login URL (`None`: a redirect followed below the layer).
    Redirected(Option<StatusCode>),
    /// No answer within the login timeout `after`, from any of `attempts` attempts; the slowest
    /// waited `slowest`.
    Timeout {
        after: Duration,
        attempts: u32,
        slowest: Duration,
    },
    /// The answer was not a usable login answer.
    Malformed(&'static str),
    /// The token cannot be sent as a header value.
    UnsendableToken,
    /// The wrapped service or the answer's body failed during the login.
    Transport,
    /// The layer's configuration is unusable.
    Config(String),
    /// The login was abandoned without an answer (its runtime shut down).
    Abandoned,
    /// A request body kept for a replay was longer than its size hint said.
    RequestBody,
    /// The request waited `max_wait` for the API budget and was not sent.
    BudgetExhausted(Duration),
    /// An OAuth 2 token endpoint refused the token request: RFC 6749 §5.2's `code` (such as
    /// `invalid_client`) and description if it gave them (the secret scrubbed); `rejected` for
    /// a 401, 403 or 422, `invalid_client` and `unauthorized_client`; the `Retry-After` it
    /// asked for.
    OAuth {
        status: StatusCode,
        rejected: bool,
        code: Option<String>,
        description: Option<String>,
        retry_after: Option<Duration>,
    },
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error { kind, source: None }
    }

    pub(crate) fn with_source(kind: Kind, source: impl Into<tower::BoxError>) -> Self {
        Error {
            kind,
            source: Some(Arc::from(source.into())),
        }
    }

    /// This error, saying where the credentials came from if it rejects them.
    pub(crate) fn with_env_hint(mut self, from_env: bool) -> Self {
        if let Kind::Rejected(_, hint) = &mut self.kind {
            *hint = from_env;
        }
        self
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new(Kind::Config(message.into()))
    }

    /// Returns `true` if the login endpoint rejected the credentials: HTTP 401, 403 or 422 (with
    /// or without a body), or an OAuth 2 token endpoint's `invalid_client` or
    /// `unauthorized_client`.
    ///
    /// Retrying will not help until the credentials are fixed; the layer backs off (growing
    /// from 5 seconds to 5 minutes) before it tries them again.
    pub fn is_rejected(&self) -> bool {
        matches!(
            self.kind,
            Kind::Rejected(..) | Kind::OAuth { rejected: true, .. }
        )
    }

    /// Returns `true` if the login did not complete within the
    /// [login timeout](crate::AuthLayer::login_timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout { .. })
    }

    /// Returns `true` if the login endpoint's answer could not be used: not JSON, no token, an
    /// unusable expiry, or larger than the size cap.
    pub fn is_malformed(&self) -> bool {
        matches!(self.kind, Kind::Malformed(_))
    }

    /// Returns `true` if the login endpoint issued a token that cannot be sent as a bearer token
    /// (control characters, spaces, CR/LF, an empty string): it was never sent. This is about
    /// the login's answer; an API's 401 `invalid_token` is never an error of the layer.
    pub fn is_unsendable_token(&self) -> bool {
        matches!(self.kind, Kind::UnsendableToken)
    }

    /// Returns `true` if the wrapped service failed to deliver the login request or its answer
    /// (connection refused, reset, TLS failure, ...). The cause is the [`source`](StdError::source).
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, Kind::Transport)
    }

    /// Returns `true` if the layer is configured in a way it refuses to use (a plain-text
    /// `http://` login URL to another host than loopback, a relative login URL) or
    /// [`Credentials::from_env`](crate::Credentials::from_env) found no credentials.
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config(_))
    }

    /// Returns `true` if the request waited the API [budget](crate::budget)'s `max_wait` for
    /// its turn and was not sent. [`RetryPolicy`](crate::retry::RetryPolicy) retries it after
    /// its back-off; a caller may also wait and try again, or shed the work.
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(self.kind, Kind::BudgetExhausted(_))
    }

    pub(crate) fn budget_exhausted(waited: Duration) -> Self {
        Error::new(Kind::BudgetExhausted(waited))
    }

    /// The HTTP status of the login answer, when the login failed because of it.
    pub fn status(&self) -> Option<StatusCode> {
        match self.kind {
            Kind::Rejected(status, _)
            | Kind::Status(status, _)
            | Kind::OAuth { status, .. }
            | Kind::Redirected(Some(status)) => Some(status),
            _ => None,
        }
    }

    /// The error code an OAuth 2 token endpoint answered, as RFC 6749 §5.2 defines it
    /// (`invalid_client`, `invalid_scope`, `unauthorized_client`, ...), if it gave one.
    ///
    /// ```
    /// # fn check(error: patchworks_auth::Error) {
    /// if error.oauth_error() == Some("invalid_scope") {
    ///     eprintln!("ask for a scope the client is granted");
    /// }
    /// # }
    /// ```
    pub fn oauth_error(&self) -> Option<&str> {
        match &self.kind {
            Kind::OAuth { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The wait the login endpoint asked for with `Retry-After`, if it did.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::Status(_, retry_after) | Kind::OAuth { retry_after, .. } => retry_after,
            _ => None,
        }
    }

    /// Whether the failure may go away by itself (the endpoint was down, slow or overloaded),
    /// as opposed to one that needs a fix (credentials, configuration, a broken answer).
    pub(crate) fn is_transient(&self) -> bool {
        let status_is = |status: StatusCode| {
            status.is_server_error()
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
        };
        match &self.kind {
            Kind::Timeout { .. } | Kind::Transport | Kind::Abandoned => true,
            Kind::Status(status, _) => status_is(*status),
            // RFC 6749 §4.1.2.1's two codes for a server that cannot serve now, which some
            // token endpoints answer with a 400 too.
            Kind::OAuth {
                status,
                rejected: false,
                code,
                ..
            } => {
                status_is(*status)
                    || matches!(
                        code.as_deref(),
                        Some("temporarily_unavailable" | "server_error")
                    )
            }
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Rejected(status, from_env) => write!(
                f,
                "Patchworks login rejected the credentials (HTTP {}): check the {}; the login \
                 is retried after a back-off",
                status.as_u16(),
                if *from_env {
                    "email and password (PATCHWORKS_EMAIL / PATCHWORKS_PASSWORD)"
                } else {
                    "account and password given to Credentials"
                }
            ),
            Kind::Status(status, _) if self.is_transient() => write!(
                f,
                "Patchworks login failed with HTTP {} until the login timeout ran out: the login \
                 endpoint is unavailable or overloaded; the next request that needs a token \
                 tries again",
                status.as_u16()
            ),
            Kind::Status(status, _) => write!(
                f,
                "Patchworks login failed with HTTP {}: check that the login URL points at the \
                 Patchworks login endpoint; the login is retried after a back-off",
                status.as_u16()
            ),
            Kind::Redirected(status) => {
                f.write_str("Patchworks login was answered with a redirect")?;
                if let Some(status) = status {
                    write!(f, " (HTTP {})", status.as_u16())?;
                } else {
                    f.write_str(" followed below the layer")?;
                }
                f.write_str(
                    ": a login never follows one, so the password stays with the login URL; set \
                     AuthLayer::login_url to the final URL, and keep FollowRedirect outside the \
                     layer",
                )
            }
            Kind::Timeout {
                after,
                attempts,
                slowest,
            } => write!(
                f,
                "Patchworks login timed out after {after:?}: the login endpoint did not answer \
                 ({attempts} attempt{}, the slowest waited {slowest:?}); check connectivity or \
                 raise AuthLayer::login_timeout",
                if *attempts == 1 { "" } else { "s" }
            ),
            Kind::Malformed(what) => write!(
                f,
                "Patchworks login answer is unusable: {what}; check that the login URL points \
                 at the Patchworks login endpoint"
            ),
            Kind::UnsendableToken => f.write_str(
                "Patchworks login issued a token that is not a valid bearer token (empty, or \
                 with spaces or control characters); it was not sent",
            ),
            Kind::Transport => f.write_str(
                "Patchworks login request failed before an answer arrived, until the login \
                 timeout ran out: the login endpoint is unreachable; the next request that \
                 needs a token tries again",
            ),
            Kind::Config(message) => write!(f, "patchworks-auth is misconfigured: {message}"),
            Kind::Abandoned => f.write_str(
                "Patchworks login was abandoned before it answered (its Tokio runtime shut \
                 down); the next request logs in again",
            ),
            Kind::RequestBody => f.write_str(
                "the request body is longer than its size hint said; the request was not sent",
            ),
            Kind::OAuth {
                status,
                rejected,
                code,
                description,
                ..
            } => {
                write!(
                    f,
                    "the OAuth 2 token endpoint refused the token request (HTTP {}",
                    status.as_u16()
                )?;
                match code {
                    Some(code) => write!(f, ", error \"{code}\"")?,
                    None => f.write_str(", no RFC 6749 error code")?,
                }
                if let Some(description) = description {
                    write!(f, ": {description}")?;
                }
                f.write_str(if *rejected {
                    "): check the client id and secret given to Credentials::client_credentials; \
                     the login is retried after a back-off"
                } else if self.is_transient() {
                    "): the token endpoint cannot serve now; the login was retried until the \
                     login timeout ran out, and the next request that needs a token tries again"
                } else {
                    "): check the token URL, the scope and the client's grants; the login is \
                     retried after a back-off"
                })
            }
            Kind::BudgetExhausted(waited) => write!(
                f,
                "the Patchworks API budget had no turn for this request within {waited:?} \
                 (Budget::max_wait); it was not sent: retry later, send less, or raise the \
                 budget if your plan allows more"
            ),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Kind` and the source carry no secret: the credentials live only in `Credentials`
        // and the token only in the cache.
        let mut d = f.debug_struct("patchworks_auth::Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_match_kinds() {
        let rejected = Error::new(Kind::Rejected(StatusCode::UNAUTHORIZED, false));
        assert!(rejected.is_rejected() && !rejected.is_transient());
        assert_eq!(rejected.status(), Some(StatusCode::UNAUTHORIZED));

        let unavailable = Error::new(Kind::Status(StatusCode::SERVICE_UNAVAILABLE, None));
        assert!(!unavailable.is_rejected() && unavailable.is_transient());

        let not_found = Error::new(Kind::Status(StatusCode::NOT_FOUND, None));
        assert!(!not_found.is_transient());

        let timeout = Error::new(Kind::Timeout {
            after: Duration::from_secs(30),
            attempts: 2,
            slowest: Duration::from_secs(30),
        });
        assert!(timeout.is_timeout() && timeout.is_transient());
        assert!(timeout.to_string().contains("30s"));
    }

    #[test]
    fn source_is_kept_and_boxed_error_downcasts() {
        let err = Error::with_source(Kind::Transport, "connection refused");
        assert_eq!(err.source().unwrap().to_string(), "connection refused");
        let boxed: tower::BoxError = err.into();
        assert!(boxed.downcast_ref::<Error>().unwrap().is_transport());
    }
}
