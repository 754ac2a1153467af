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
//! let request = Request::get("https://svc-fabric.pwks.co/api/v1/flows")
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
//! | Token cached and fresh | Attached; no lock, no allocation for the token, no await: one coarse clock reading. |
//! | Token in its refresh window ([`refresh_before`](AuthLayer::refresh_before)) | Still attached; one background login renews it. |
//! | Token expired | Never sent: requests wait for a new login. This holds when the runtime that logged in is gone, idle or late: the deadline is checked on every request. |
//! | Client used from a new runtime per call (a sync facade, a CLI) | The token is shared and reused for as long as it is valid. A login whose runtime shut down is handed back: a request waiting on it logs in itself, and a renewal is due again at once; the request that takes it up is sent with the current token and returns once the renewal is over, so the token is renewed before it expires. |
//! | 401 whose `WWW-Authenticate` names a `Bearer` error other than `invalid_token` (`insufficient_scope`, ...) | Returned as is: the API refuses the request, not the token. No token discarded, no login. |
//! | Any other 401 to a request that carried the token | The token is discarded (once, however many requests carried it), the layer logs in again and replays the request once; the caller sees the replay's response. |
//! | A bare 401 (no `Bearer` error) within 10 s of a login a 401 caused, once that login's token has had any other answer | If its path has not answered that token, settled first: the layer checks the token with a `GET` that answered it with a 2xx on the 401's origin (at most one check a second per token, counted in the API budget, shared by the 401s waiting for it). The check answered with a 2xx: the 401 is the path's, returned as is, no login. Answered 401: the token was revoked, recovered as above (the caller gets its replay's answer). Anything else (a 429, which also pauses the API budget, a 5xx, no answer within the [login timeout](AuthLayer::login_timeout), a transport error): the check cannot tell, and the 401 is recovered as a revocation's, so that no caller is handed one. So 401s from paths the account may not see cost at most one login in any 10 s (20,000 such paths between 200s: one login, then at most one more per 10 s), and a revocation among them is not returned. Without such a `GET` on that origin yet, the 401 is returned unless the answer before it was such a 401 too. A 401 from a path that answered the token, or `invalid_token`, is a revocation: recovered as above. A revocation less than a second after a check that found the token good can still return bare 401s from such paths until the next check. |
//! | 401 again on that replay | Returned as is, and that method and path return their 401s as they are for 1, 2, 4, ... s (at most 5 min); any other answer from them ends this. After the second endpoint in a row refuses a fresh token with no other answer between, 401s on any endpoint are returned as they are for a growing grace, so an API that refuses everything costs a login now and then. Any answer but 401 clears that. |
//! | 401 to a request whose body could not be kept | Returned as is, once the login that renews the token is over, whatever its outcome. A request that could be replayed fails with that login's [`Error`] instead. |
//! | Login attempt fails for a while: 5xx, 429, connection refused or reset | Retried inside the login, 250 ms doubling to 2 s with up to 50% jitter, and never before a `Retry-After`. Callers keep waiting; they fail only when the login timeout is spent, with the last attempt's [`Error`]. A `Retry-After` longer than the login timeout fails callers at once until it has passed. |
//! | Login slow but healthy | No attempt is cut before [`login_timeout`](AuthLayer::login_timeout): a login that answers within it gives its token to every caller. An attempt with no answer after a third of the timeout gets a second beside it (at most two in flight); the first good answer wins. After the timeout, the error says how many attempts ran and how long the slowest waited. |
//! | Login rejects the credentials (401, 403, 422) or answers something unusable | Callers fail at once with the [`Error`]; for the next 5 s doubling to 5 min (with jitter) requests fail fast with it, then a request tries again. |
//! | Login answered with a redirect, or fetched from another URI by a redirect-following service below | Refused: the password never follows a redirect, and a token from elsewhere is never used. |
//! | Request to an origin not trusted with the token, or a network-path reference (`//host/..`) or `*` | Passed through untouched; no login; said at DEBUG, once a minute at most. |
//! | Request that has its own `Authorization` | Passed through untouched; no login, no 401 handling. |
//! | A [store] shared by several processes ([`AuthLayer::store`]) | A process with no usable token (first request, expiry, a 401, a renewal) takes a newer token from the store, or logs in under the store's lock and saves its token once the waiting requests have it; the others wait for it. One login for the fleet. After a 401, only a token saved by a process that logged in after the same token was refused, or obtained after the 401 arrived, is taken; a replay refused with a token from the store discards it and is replayed once more. A request with a fresh token never touches the store. |
//! | The store down, slow (its operations for one login over [`store_timeout`](AuthLayer::store_timeout), 300 ms by default) or refusing | The process logs in by itself, as without a store, and warns once per outage; no request fails for it. Once the store answers, the fleet converges on one token without a login. |
//! | `poll_ready` reserved capacity below the layer (`ConcurrencyLimit`, `Buffer`) and the request must wait for a login | The reservation is let go before the wait, so the login can use it; the request drives the service ready again after. |
//! | `ResponseFuture` polled after it completed | Panics, "ResponseFuture polled after completion", in every state, as `async` blocks do. |
//!
//! The token goes only to requests whose URI is relative, whose origin is a Patchworks host
//! over `https` (`*.wearepatchworks.com`, `*.pwks.co`), the [login URL](AuthLayer::login_url)'s,
//! or one given to [`trust_origin`](AuthLayer::trust_origin). A request to another origin goes
//! through untouched, said at DEBUG (once a minute at most).
//!
//! Timing: a token's expiry is counted from the moment its login request was sent. Renewal
//! starts [`refresh_before`](AuthLayer::refresh_before) ahead (5 minutes by default, at most
//! half the lifetime). A token stops being sent a tenth of its lifetime (at most 5 s) before it
//! expires. A token's age is kept twice: a Tokio timer (which a paused test clock drives too),
//! and a comparison of the coarse monotonic clock with its deadlines on every request (about
//! 9 ns on Linux), for the timers that do not run. Each login, retries included, is bounded by
//! [`login_timeout`](AuthLayer::login_timeout), which belongs to the login: a caller giving up
//! does not cancel it for the others.
//!
//! The layer needs a Tokio runtime to log in (logins and token timers are Tokio tasks); the
//! token it holds outlives that runtime.
//!
//! # Replays
//!
//! To replay a request after a 401, the layer keeps a copy of its method, URI, headers and
//! extensions, and its body when that has a known size up to
//! [`replay_body_limit`](AuthLayer::replay_body_limit) (64 KiB by default): such a body is read
//! before the request is sent and rebuilt with `From<Bytes>`, so trailers are not kept. A
//! request is replayed at most once, or twice when the first replay's token came from a shared
//! [store] and was refused too (the store may hold a token revoked since).
//!
//! # Layer order
//!
//! Outermost first:
//!
//! ```text
//! ServiceBuilder::new()
//!     .map_request(|r: Request<B>| r.map(Body::new)) // 0. only for bodies that are not bytes
//!     .timeout(Duration::from_secs(30))    // 1. tower's timeout: bounds the whole call
//!     .layer(FollowRedirectLayer::new())   // 2. tower-http: each hop is a new request
//!     .retry(RetryPolicy::new())           // 3. each attempt gets the current token
//!     .layer(AuthLayer::new(creds))        // 4. the token; a 401 renews it and replays once
//!     .service(client)                     //    the login goes through the bare client
//! ```
//!
//! 0. A client whose requests carry axum's `Body`, a forwarded `Incoming` or a `BoxBody` turns
//!    them into one [`body::Body`] first, outermost, so that every layer below sees one body
//!    type (see [`body`]).
//! 1. `ServiceBuilder::timeout` (tower's `TimeoutLayer`, not tower-http's server-side one)
//!    outermost bounds what the caller waits, every hop, retry and login wait included; it
//!    does not abort a login other requests share. Under an API [budget] it counts a
//!    request's wait for its turn too: keep it longer than the budget's `max_wait` times the
//!    attempts, or a request over the budget fails as "request timed out" instead of
//!    [`is_budget_exhausted`](Error::is_budget_exhausted), which the retry policy retries. The
//!    ready client (feature `rustls`) times each send below this layer instead.
//! 2. Redirects outside this layer: a redirect is a new request that passes the origin check
//!    again, so the token never follows one to another origin, and the login `POST` is never
//!    redirected.
//! 3. Retries outside this layer: a retried request gets the token current then, and never sees
//!    a 401 this layer recovers. Retried requests are copied: their bodies must be `Clone`, or a
//!    [`body::Body`] of bytes ([`retry::RetryBody`]).
//! 4. This layer right above the client, which it logs in through.
//!
//! # Configuration errors
//!
//! One rule for a value that can be wrong, judged where the layer is built: an empty or
//! unsendable API key ([`Credentials::api_key`]), an empty account or password, client
//! credentials without a token URL, a login URL or a trusted origin that is not absolute
//! `https` (or `http` to loopback) or that carries a password ([`AuthLayer::login_url`],
//! [`AuthLayer::trust_origin`]), a zero
//! [`login_timeout`](AuthLayer::login_timeout), a zero
//! [`store_timeout`](AuthLayer::store_timeout) with a store, a budget that could never send
//! ([`Budget::new`](crate::budget::Budget::new)), and the ready client's
//! `PatchworksClient::base_url` (feature `rustls`). The layer keeps the value, logs what is
//! wrong at ERROR once where it is put to use (the first service made with it, the reqwest
//! middleware, the ready client: not at a builder step on the way, such as client credentials
//! before their `login_url`), and then makes `login()` and every request fail with an
//! [`Error`] for which [`is_config`](Error::is_config) is `true`, without a byte sent: nothing panics, and nothing fails later in another way. For a program that would
//! rather not start, [`AuthLayer::check_config`] returns that error at once, and so do the
//! `try_` forms of the inputs that have one ([`AuthLayer::try_login_url`],
//! [`AuthLayer::try_trust_origin`],
//! `PatchworksClient::try_base_url`, [`Credentials::try_api_key`],
//! [`Budget::try_new`](crate::budget::Budget::try_new)). A constructor that parses
//! ([`Credentials::from_env`], `RedisStore::new`) returns its error as std's parsers do.
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
//! - `test-util`: `test_util::FakePatchworks`, a fake Patchworks on loopback for your tests.
//! - `redis`: `store::RedisStore`, a token store on a Redis server or a Redis Cluster, for a
//!   fleet on several hosts. ([`store::FileStore`] needs no feature.)
//! - `redis-tls`: `rediss://` (TLS) for `RedisStore`, over rustls with the webpki roots.
//! - `rustls`: `AuthLayer::https_client()`, a ready `PatchworksClient` (hyper-util over rustls,
//!   redirects, retries, the layer, a timeout on each send), over HTTP/1.1.
//! - `http2`: HTTP/2 (negotiated by ALPN) for that client too. Off by default: 240 requests a
//!   minute fit one kept-alive HTTP/1.1 connection, and h2 is a tenth of a first build.
//! - `reqwest`: `reqwest::AuthMiddleware`, the layer as a `reqwest_middleware::Middleware`.
//! - `metrics`: counters, a histogram and a gauge through the `metrics` facade: logins and
//!   their durations, 401s, replays, the token's expiry, the store's operations (README,
//!   "Operating it").
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
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod bounds;
pub mod budget;
mod cache;
mod challenge;
#[cfg(feature = "rustls")]
mod client;
mod clock;
mod config;
mod credentials;
mod error;
mod future;
mod layer;
mod login;
mod metrics;
mod oauth;
#[cfg_attr(not(any(feature = "rustls", fuzzing)), allow(dead_code))]
mod path;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
pub mod retry;
mod scope;
mod service;
pub mod store;
mod token;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;

#[cfg(test)]
mod checks;

/// The README's Rust blocks, compiled and run as doc tests so that they never rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Entry points for `cargo fuzz` (see `fuzz/`), which builds with `--cfg fuzzing`; not an API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `bytes` as a login answer; must never panic.
    pub fn login_answer(bytes: &[u8]) {
        let _ = crate::login::parse_answer(bytes, std::time::SystemTime::now());
    }

    /// Joins `path` (what follows the first `\0` of `bytes`) to the base path before it; must
    /// never panic, and a joined path must stay under the base: it starts with the base's
    /// normalized path at a segment boundary, and no segment of it reads as `.` or `..`, or
    /// holds a `/` or `\\`, however many times it is percent-decoded.
    pub fn base_join(bytes: &[u8]) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        let (base, path) = text.split_once('\0').unwrap_or(("/api/v1/", text));
        let Ok(base_uri) = format!("https://h{base}").parse::<http::Uri>() else {
            return;
        };
        let Ok(joined) = crate::path::join(base_uri.path(), path) else {
            return;
        };
        let joined_path = joined.split('?').next().unwrap_or_default();
        let root = crate::path::join(base_uri.path(), "/").expect("the base's own root joins");
        let root = root.trim_end_matches('/');
        assert!(
            joined_path == root || joined_path.starts_with(&format!("{root}/")),
            "{path:?} left {root:?}: {joined:?}"
        );
        for segment in joined_path.split('/') {
            // However many times a server decodes it.
            let mut text = segment.as_bytes().to_vec();
            for _ in 0..4 {
                let bare = text.split(|b| *b == b';').next().unwrap_or_default();
                assert!(bare != b"." && bare != b"..", "{path:?} gave {joined:?}");
                assert!(
                    !text.contains(&b'/') && !text.contains(&b'\\'),
                    "{path:?} gave {joined:?}"
                );
                text = percent_decode(&text);
            }
        }
    }

    /// Every `%XX` decoded: written apart from the code under test.
    fn percent_decode(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
            match (bytes[i], hex(i + 1), hex(i + 2)) {
                (b'%', Some(high), Some(low)) => {
                    out.extend(u8::try_from(high * 16 + low).ok());
                    i += 3;
                }
                (byte, ..) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        out
    }

    /// Reads `bytes` as a `WWW-Authenticate` value; must never panic, and an error it finds must
    /// be a part of the value.
    pub fn www_authenticate(bytes: &[u8]) {
        if let Some(error) = crate::challenge::bearer_error(bytes) {
            assert!(error.len() <= bytes.len());
        }
        if let Ok(value) = http::HeaderValue::from_bytes(bytes) {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::WWW_AUTHENTICATE, value);
            let _ = crate::challenge::verdict(&headers);
        }
    }
}

#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use client::{PatchworksClient, DEFAULT_BASE_URL};
pub use credentials::Credentials;
pub use error::Error;
pub use future::ResponseFuture;
pub use layer::{AuthLayer, DEFAULT_LOGIN_URL, DEFAULT_USERNAME_LOGIN_URL};
pub use service::Auth;
pub use token::{LoginReason, TokenState};
