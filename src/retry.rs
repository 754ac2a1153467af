//! A retry policy for the Patchworks API.

use http::{Method, Request, Response, StatusCode};
use std::{
    error::Error as StdError,
    io,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tower::{
    retry::{
        backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff},
        budget::{Budget, TpsBudget},
        Policy,
    },
    util::rng::HasherRng,
    BoxError,
};

/// [`Policy`] for [`tower::retry::Retry`] that retries what is safe to retry against Patchworks.
///
/// - Only idempotent requests: `GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS`. A `POST` or `PATCH`
///   is retried only when it was never sent (refused by the API [budget](crate::budget)): any
///   other attempt may have been applied. [`retry_429_for_any_method`] opts in to retrying a
///   429 whatever the method.
///
/// [`retry_429_for_any_method`]: RetryPolicy::retry_429_for_any_method
/// - Only transient failures: a connection that could not be made or broke before the answer
///   (refused, reset, aborted, closed), a request the API [budget](crate::budget) did not send
///   within its `max_wait`, and the answers `429`, `502`, `503` and `504`.
/// - After a back-off: exponential from 100 ms to 10 s with random jitter, or the answer's
///   `Retry-After` (seconds or an HTTP date), up to [`max_retry_after`](Self::max_retry_after).
/// - At most [`max_retries`](Self::max_retries) times (default 3), and, with a
///   [`retry_budget`](Self::retry_budget), only while that retry budget allows.
/// - Only requests it can copy: a body that is `Clone` (`Full<Bytes>`, `Empty<Bytes>`,
///   `String`), or a [`body::Body`](crate::body::Body) made from bytes (see [`RetryBody`]). A
///   streamed body is sent once.
///
/// Put it **outside** [`AuthLayer`](crate::AuthLayer): each attempt then passes through the
/// layer and gets the current token, and a 401 is already handled (renewed and replayed once)
/// below the retry, which never sees it.
///
/// ```
/// use bytes::Bytes;
/// use http::Request;
/// use http_body_util::Full;
/// use patchworks_auth::{retry::RetryPolicy, AuthLayer, Credentials};
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_http::follow_redirect::FollowRedirectLayer;
///
/// # let http_client = tower::service_fn(|_: Request<Full<Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
/// # });
/// // The crate's one layer order (see its "Layer order"): timeout, redirects, retry, the layer.
/// let client = ServiceBuilder::new()
///     .timeout(Duration::from_secs(30)) // bounds the whole call, retries included
///     .layer(FollowRedirectLayer::new()) // each hop a new request
///     .retry(RetryPolicy::new().max_retries(2)) // outside the layer: current token
///     .layer(AuthLayer::new(Credentials::new("ops@example.com", "pw")))
///     .service(http_client);
/// # let _ = client;
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    retries_left: u32,
    backoff: ExponentialBackoff,
    max_retry_after: Duration,
    retry_budget: Option<Arc<TpsBudget>>,
    /// Whether a 429 is retried whatever the request's method.
    throttled_any_method: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// Default for [`max_retries`](Self::max_retries): 3.
    pub const DEFAULT_MAX_RETRIES: u32 = 3;

    /// A policy with the defaults: 3 retries, back-off from 100 ms to 10 s, `Retry-After`
    /// honoured up to 60 s, no retry budget.
    pub fn new() -> Self {
        RetryPolicy {
            retries_left: Self::DEFAULT_MAX_RETRIES,
            backoff: backoff(Duration::from_millis(100), Duration::from_secs(10)),
            max_retry_after: Duration::from_secs(60),
            retry_budget: None,
            throttled_any_method: false,
        }
    }

    /// How many times one request is retried at most (so `n + 1` attempts). Default: 3.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.retries_left = n;
        self
    }

    /// The back-off between attempts: exponential from `min` to `max`, with random jitter of up
    /// to the delay itself. Default: 100 ms to 10 s.
    ///
    /// # Panics
    ///
    /// If `min` is greater than `max`, or `max` is zero.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = backoff(min, max);
        self
    }

    /// The longest `Retry-After` honoured; an answer asking for longer is not retried (the
    /// caller gets it, and decides). Default: 60 s.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Retries only while the retry budget `budget` allows (tower's, not the API [budget](crate::budget)), so that a failing API gets a bounded share of
    /// retries rather than a multiple of its load. Successes deposit into it. Share one budget
    /// between the clones of a client.
    pub fn retry_budget(mut self, budget: Arc<TpsBudget>) -> Self {
        self.retry_budget = Some(budget);
        self
    }

    /// Retries a `429 Too Many Requests` whatever the request's method (`POST` and `PATCH`
    /// too), after its `Retry-After` (up to [`max_retry_after`](Self::max_retry_after)) or the
    /// back-off. Off by default. For a client that only writes (an Inbound API pusher sends
    /// `POST`s), a 429 is otherwise always the caller's to handle.
    ///
    /// The trade-off: a 429 says the server would not serve the request now (RFC 6585 §4), and
    /// Patchworks, like most rate limiters, refuses it before doing anything with it. A server
    /// or a proxy that answered 429 after applying the request would have it applied twice.
    /// Turn it on where a write is idempotent by its content (an upsert by a key of yours) or
    /// where that cannot happen. Other failures of a `POST` are still not retried: a broken
    /// connection or a 503 may come after the write was applied.
    ///
    /// ```
    /// use patchworks_auth::retry::RetryPolicy;
    ///
    /// let policy = RetryPolicy::new().retry_429_for_any_method();
    /// # let _ = policy;
    /// ```
    pub fn retry_429_for_any_method(mut self) -> Self {
        self.throttled_any_method = true;
        self
    }

    /// The delay before retrying after `result`, if it is worth retrying at all, and whether
    /// the request was never sent (so that any method may be retried).
    fn delay<ResBody>(
        &mut self,
        result: &Result<Response<ResBody>, BoxError>,
    ) -> Option<(Delay, Sent)> {
        match result {
            Ok(response) => {
                let sent = match response.status() {
                    StatusCode::TOO_MANY_REQUESTS if self.throttled_any_method => Sent::Never,
                    StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT => Sent::Maybe,
                    _ => return None,
                };
                match retry_after(response) {
                    Some(wait) if wait > self.max_retry_after => None,
                    Some(wait) => Some((Delay::Exactly(wait), sent)),
                    None => Some((Delay::Backoff, sent)),
                }
            }
            Err(error) if is_connection_error(error.as_ref()) => {
                Some((Delay::Backoff, Sent::Maybe))
            }
            // Never sent: the budget had no turn for it within its `max_wait`.
            Err(error)
                if error
                    .downcast_ref::<crate::Error>()
                    .is_some_and(crate::Error::is_budget_exhausted) =>
            {
                Some((Delay::Backoff, Sent::Never))
            }
            Err(_) => None,
        }
    }
}

enum Delay {
    Backoff,
    Exactly(Duration),
}

/// Whether a failed attempt may have reached Patchworks: one that never did (or a 429, with
/// [`RetryPolicy::retry_429_for_any_method`]) is retried whatever its method.
#[derive(PartialEq)]
enum Sent {
    Maybe,
    Never,
}

fn backoff(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBackoffMaker::new(min, max, 1.0, HasherRng::default())
        .expect("RetryPolicy::backoff takes min <= max and max > 0")
        .make_backoff()
}

/// A request body [`RetryPolicy`] can copy to retry a request with: every `Clone` body
/// (`Full<Bytes>`, `Empty<Bytes>`, `String`) and [`body::Body`](crate::body::Body), which
/// copies its bytes and declines a stream.
pub trait RetryBody: Sized {
    /// A copy to send again, or `None` if this body cannot be copied (the request is then not
    /// retried).
    fn try_clone(&self) -> Option<Self>;
}

impl<B: Clone> RetryBody for B {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl RetryBody for crate::body::Body {
    fn try_clone(&self) -> Option<Self> {
        crate::body::Body::try_clone(self)
    }
}

impl<B, ResBody> Policy<Request<B>, Response<ResBody>, BoxError> for RetryPolicy
where
    B: RetryBody,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request<B>,
        result: &mut Result<Response<ResBody>, BoxError>,
    ) -> Option<Self::Future> {
        let Some((delay, sent)) = self.delay(result) else {
            if let (Some(budget), Ok(response)) = (&self.retry_budget, &*result) {
                if !response.status().is_server_error() {
                    budget.deposit();
                }
            }
            return None;
        };
        if (sent == Sent::Maybe && !is_idempotent(request.method())) || self.retries_left == 0 {
            return None;
        }
        if let Some(budget) = &self.retry_budget {
            if !budget.withdraw() {
                return None;
            }
        }
        self.retries_left -= 1;
        tracing::debug!(
            target: "patchworks_auth",
            method = %request.method(),
            retries_left = self.retries_left,
            "retrying a request to Patchworks"
        );
        Some(match delay {
            Delay::Backoff => self.backoff.next_backoff(),
            Delay::Exactly(wait) => tokio::time::sleep(wait),
        })
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.retries_left == 0 {
            return None; // never retried: no need for a copy
        }
        // A `POST` is copied too: it is retried if the budget refuses it, unsent.
        let mut clone = Request::new(request.body().try_clone()?);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// The wait an answer's `Retry-After` asks for: delay-seconds or an HTTP date.
fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    crate::challenge::retry_after(response.headers(), SystemTime::now())
}

/// Whether an error (or one of its causes) is a connection that could not be made or broke.
fn is_connection_error(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled() {
                return true;
            }
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::RETRY_AFTER;

    fn answer(status: u16, retry_after: Option<&str>) -> Result<Response<()>, BoxError> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(value) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, value.parse().unwrap());
        }
        Ok(response)
    }

    #[tokio::test]
    async fn retries_only_transient_answers_of_idempotent_requests() {
        let policy = RetryPolicy::new();
        for (method, status, retried) in [
            (Method::GET, 503, true),
            (Method::GET, 429, true),
            (Method::PUT, 502, true),
            (Method::DELETE, 504, true),
            (Method::GET, 500, false),
            (Method::GET, 401, false),
            (Method::GET, 200, false),
            (Method::POST, 503, false),
            (Method::PATCH, 503, false),
        ] {
            let mut request = Request::builder().method(method.clone()).body(()).unwrap();
            let mut result = answer(status, None);
            let mut policy = policy.clone();
            let retry = Policy::retry(&mut policy, &mut request, &mut result);
            assert_eq!(retry.is_some(), retried, "{method} {status}");
        }
    }

    /// The retry waits what `Retry-After` asks, on Tokio's clock (paused here): not a moment
    /// less.
    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_out_its_retry_after() {
        use std::{
            future::Future,
            task::{Context, Waker},
        };
        let ready = |retry: std::pin::Pin<&mut tokio::time::Sleep>| {
            retry
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
        };
        let mut request = Request::get("/").body(()).unwrap();
        let retry = Policy::retry(
            &mut RetryPolicy::new(),
            &mut request,
            &mut answer(429, Some("2")),
        );
        let mut retry = std::pin::pin!(retry.expect("a 429 to a GET is retried"));
        assert!(!ready(retry.as_mut()));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!ready(retry.as_mut()), "before its Retry-After");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(ready(retry.as_mut()), "at its Retry-After");
    }

    #[tokio::test]
    async fn a_429_is_retried_for_any_method_only_when_asked() {
        for (policy, retried) in [
            (RetryPolicy::new(), false),
            (RetryPolicy::new().retry_429_for_any_method(), true),
        ] {
            for method in [Method::POST, Method::PATCH] {
                let mut request = Request::builder().method(method.clone()).body(()).unwrap();
                let mut policy = policy.clone();
                let retry = Policy::retry(&mut policy, &mut request, &mut answer(429, Some("1")));
                assert_eq!(retry.is_some(), retried, "{method}");
                // Other failures of a POST are never retried.
                let retry = Policy::retry(&mut policy, &mut request, &mut answer(503, None));
                assert!(retry.is_none(), "{method} 503");
            }
        }
        // Its `Retry-After` is honoured, and one too long is not waited for.
        let mut policy = RetryPolicy::new()
            .retry_429_for_any_method()
            .max_retry_after(Duration::from_secs(5));
        assert!(matches!(
            policy.delay(&answer(429, Some("2"))),
            Some((Delay::Exactly(d), Sent::Never)) if d == Duration::from_secs(2)
        ));
        assert!(policy.delay(&answer(429, Some("60"))).is_none());
    }

    #[tokio::test]
    async fn retries_a_budget_refusal_whatever_the_method_it_was_never_sent() {
        for method in [Method::GET, Method::POST, Method::PATCH] {
            let mut request = Request::builder().method(method.clone()).body(()).unwrap();
            let mut policy = RetryPolicy::new();
            assert!(
                Policy::<_, Response<()>, BoxError>::clone_request(&mut policy, &request).is_some(),
                "{method}"
            );
            let refused = crate::Error::budget_exhausted(Duration::from_secs(30));
            let mut result: Result<Response<()>, BoxError> = Err(refused.into());
            let retry = Policy::retry(&mut policy, &mut request, &mut result);
            assert!(retry.is_some(), "{method}");
        }
        // A POST whose connection broke may have been applied: not retried.
        let mut request = Request::post("/").body(()).unwrap();
        let broken: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionReset));
        let retry = Policy::retry(
            &mut RetryPolicy::new(),
            &mut request,
            &mut Err::<Response<()>, _>(broken),
        );
        assert!(retry.is_none());
    }

    #[test]
    fn reads_retry_after_and_refuses_long_waits() {
        let mut policy = RetryPolicy::new().max_retry_after(Duration::from_secs(5));
        assert!(matches!(
            policy.delay(&answer(503, Some("2"))),
            Some((Delay::Exactly(d), Sent::Maybe)) if d == Duration::from_secs(2)
        ));
        assert!(policy.delay(&answer(503, Some("3600"))).is_none());
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
        assert!(matches!(
            policy.delay(&answer(429, Some(&soon))),
            Some((Delay::Exactly(d), Sent::Maybe)) if d <= Duration::from_secs(3)
        ));
        assert!(matches!(
            policy.delay(&answer(503, Some("soon"))),
            Some((Delay::Backoff, Sent::Maybe))
        ));
    }

    #[tokio::test]
    async fn stops_after_max_retries_and_when_the_budget_is_spent() {
        let mut request = Request::get("/").body(()).unwrap();
        let mut policy = RetryPolicy::new().max_retries(2);
        let mut tries = 0;
        while Policy::retry(&mut policy, &mut request, &mut answer(503, None)).is_some() {
            tries += 1;
        }
        assert_eq!(tries, 2);

        let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.0));
        let mut policy = RetryPolicy::new().max_retries(100).retry_budget(budget);
        let mut tries = 0;
        while Policy::retry(&mut policy, &mut request, &mut answer(503, None)).is_some() {
            tries += 1;
        }
        assert!(tries < 100, "{tries}");
    }

    #[test]
    fn connection_errors_are_found_among_the_causes() {
        let refused: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(is_connection_error(refused.as_ref()));
        let wrapped = crate::error::Error::with_source(crate::error::Kind::Transport, refused);
        assert!(is_connection_error(&wrapped));
        let other: BoxError = "bad request".into();
        assert!(!is_connection_error(other.as_ref()));
    }
}
