//! A [tower] layer that logs in to the [Patchworks] API and keeps a bearer token fresh.
//!
//! Wrap any HTTP client service (hyper-util's client, an axum app's outbound client, a
//! `service_fn`) with [`AuthLayer`], and every request to Patchworks carries
//! `Authorization: Bearer <token>`: the layer logs in when the first request needs a token,
//! reuses the token, renews it before it expires and after a 401, and never logs in twice at
//! once.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use patchworks_auth::{AuthLayer, Credentials};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let https_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! // Any hyper-util client with a TLS connector (hyper-rustls, hyper-tls).
//! let client = ServiceBuilder::new()
//!     .layer(AuthLayer::new(Credentials::from_env()?))
//!     .service(https_client);
//!
//! let request = Request::get("https://core.wearepatchworks.com/api/v1/flows")
//!     .body(Full::<Bytes>::default())?;
//! let response = client.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! | Situation | What the layer does |
//! |---|---|
//! | Layer built | Nothing: no I/O until a request needs a token. |
//! | First request, or any number at once | One login, through the wrapped service; every request waits on it. |
//! | Token cached and fresh | Attached; no lock, no clock read, no allocation for the token, no await. |
//! | Token in its refresh window ([`refresh_before`](AuthLayer::refresh_before)) | Still attached; one background login renews it. |
//! | Token expired | Never sent: requests wait for a new login. |
//! | 401 to a request that carried the token | The token is discarded (once, however many requests carried it), the layer logs in again and replays the request once; the caller sees the replay's response. |
//! | 401 again right after such a login | Returned as is: the API refuses the request, not the token. Repeated, the layer waits 1, 2, 4, ... s (at most 5 min) before it blames the token again. |
//! | 401 to a request whose body could not be kept | Returned as is, once the token is renewed. |
//! | Login fails | Requests fail with a [`patchworks_auth::Error`](Error); later ones fail fast with the same error during a back-off: 250 ms doubling to 2 s for an endpoint that is down or slow, 5 s doubling to 5 min for rejected credentials or a broken answer. |
//! | Request to another origin | Passed through untouched; no login. |
//! | Request that has its own `Authorization` | Passed through untouched; no login, no 401 handling. |
//!
//! The token goes only to requests whose URI is relative, whose origin is a Patchworks host
//! over `https` (`*.wearepatchworks.com`, `*.pwks.co`), or whose origin is the
//! [login URL](AuthLayer::login_url)'s.
//!
//! Timing: a token's expiry is counted from the moment its login request was sent. Renewal
//! starts [`refresh_before`](AuthLayer::refresh_before) ahead (5 minutes by default, at most
//! half the lifetime). A token stops being sent a tenth of its lifetime (at most 5 s) before it
//! expires. Each login is bounded by [`login_timeout`](AuthLayer::login_timeout), which belongs
//! to the login: a caller giving up does not cancel it for the others.
//!
//! The layer needs a Tokio runtime (logins and token timers are Tokio tasks).
//!
//! # Replays
//!
//! To replay a request after a 401, the layer keeps a copy of its method, URI, headers and
//! extensions, and its body when that has a known size up to
//! [`replay_body_limit`](AuthLayer::replay_body_limit) (64 KiB by default): such a body is read
//! before the request is sent and rebuilt with `From<Bytes>`, so trailers are not kept. A
//! request is replayed at most once.
//!
//! # Layer order
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(FollowRedirectLayer::new())  // outside: every hop passes the origin check again
//!     .layer(TimeoutLayer::new(..))       // bounds a request, including a wait for a login
//!     .layer(RetryLayer::new(..))         // a retried request gets the current token
//!     .layer(AuthLayer::new(creds))
//!     .service(client)                    // the login goes through this, too
//! ```
//!
//! Keep redirects outside this layer: then a redirect to another origin is a new request that
//! the origin check sees, so the token never follows it, and the login `POST` is never
//! redirected. A timeout outside bounds what the caller waits; it does not abort a login others
//! wait on.
//!
//! # Secrets
//!
//! `Debug` of [`Credentials`], the layer, the service and every error shows neither the password
//! nor the token, and no log line carries them. The token's header value is marked
//! [sensitive](http::HeaderValue::set_sensitive). A token that is not a valid bearer token
//! (empty, spaces, control characters) is refused, never sent. A login URL in plain-text `http`
//! is refused unless its host is loopback. The login answer is read up to 64 KiB.
//!
//! # Feature flags
//!
//! - `test-util`: [`test_util::FakePatchworks`], a fake Patchworks on loopback for your tests.
//!
//! [tower]: https://docs.rs/tower
//! [Patchworks]: https://www.wearepatchworks.com

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    missing_debug_implementations
)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod cache;
mod challenge;
mod clock;
mod credentials;
mod error;
mod future;
mod layer;
mod login;
pub mod retry;
mod scope;
mod service;

#[cfg(feature = "test-util")]
pub mod test_util;

/// Entry points for `cargo fuzz` (see `fuzz/`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `bytes` as a login answer; must never panic.
    pub fn login_answer(bytes: &[u8]) {
        let _ = crate::login::parse_answer(bytes, std::time::SystemTime::now());
    }
}

pub use cache::TokenState;
pub use credentials::Credentials;
pub use error::Error;
pub use future::ResponseFuture;
pub use layer::{AuthLayer, DEFAULT_LOGIN_URL};
pub use service::Auth;
