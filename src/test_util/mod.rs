//! A fake Patchworks on loopback, for tests: yours and ours.
//!
//! [`FakePatchworks`] is a real HTTP/1 server on `127.0.0.1:0`, reached over TCP. It issues
//! JWT-shaped tokens at `/api/v1/login`, answers every other path as an API endpoint that
//! checks the bearer token, and lets a test change its behaviour (token lifetime, slow, hung or
//! failing logins, revocation, an API that refuses everything) and read what it saw.
//!
//! It keeps time with Tokio's clock, so under [`tokio::time::pause`][pause] its tokens expire in
//! paused time, like the layer's. See [`hold_clock`] for doing I/O with a paused clock.
//!
//! Requires the `test-util` feature.
//!
//! [pause]: https://docs.rs/tokio/1/tokio/time/fn.pause.html
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, StatusCode};
//! use http_body_util::Full;
//! use patchworks_auth::{test_util::FakePatchworks, AuthLayer};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let patchworks = FakePatchworks::start().await?;
//! patchworks.set_token_lifetime(Duration::from_secs(3600));
//! let client = AuthLayer::new(patchworks.credentials())
//!     .login_url(patchworks.login_url())
//!     .layer(patchworks.client());
//!
//! let get = || Request::get(patchworks.uri("/api/v1/flows")).body(Full::<Bytes>::default());
//! assert_eq!(client.clone().oneshot(get()?).await?.status(), StatusCode::OK);
//!
//! patchworks.revoke_tokens(); // the next call gets a 401, logs in again and is replayed
//! assert_eq!(client.oneshot(get()?).await?.status(), StatusCode::OK);
//! assert_eq!(patchworks.logins(), 2);
//! assert_eq!(patchworks.api_calls(), 3);
//! assert_eq!(patchworks.unauthorized(), 1);
//! # Ok(())
//! # }
//! ```

use crate::Credentials;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};

mod server;

use server::serve;

/// The login path of the fake Patchworks, as in production.
pub const LOGIN_PATH: &str = "/api/v1/login";
/// The path of the fake's username login ([`Credentials::username`]), which takes
/// `{"username", "password"}` with [`EMAIL`] as the username.
pub const USERNAME_LOGIN_PATH: &str = "/fabric/api/login";

/// The path of the fake's OAuth 2 token endpoint ([`Credentials::client_credentials`]), which
/// takes RFC 6749 §4.4's form with [`CLIENT_ID`] and [`CLIENT_SECRET`], in HTTP Basic or in the
/// body, and answers §5.1's `{"access_token", "token_type", "expires_in"}`.
pub const TOKEN_PATH: &str = "/oauth/token";

/// The OAuth 2 client id the fake's token endpoint accepts.
pub const CLIENT_ID: &str = "inbound-client";

/// The OAuth 2 client secret the fake's token endpoint accepts.
pub const CLIENT_SECRET: &str = "client secret/with:odd&chars=";

/// The email the fake Patchworks accepts.
pub const EMAIL: &str = "ops@example.com";

/// The password the fake Patchworks accepts.
pub const PASSWORD: &str = "correct horse battery staple";

/// A hyper-util client for plain HTTP, the kind the examples and tests wrap.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How the fake Patchworks answers a login with the right credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginAnswer {
    /// `200` with `{"message", "token", "expires_in"}`: the real answer.
    Token,
    /// `200` with `{"message", "token"}`: the expiry is only in the JWT's `exp` claim.
    TokenWithoutExpiresIn,
    /// `200` with this token and `expires_in`, whatever it contains.
    RawToken(String),
    /// This status, with a JSON `{"message"}` body.
    Status(StatusCode),
    /// `200` with this body, whatever it contains.
    Body(Bytes),
    /// Never answers.
    Hang,
    /// `429 Too Many Requests` with `Retry-After: <seconds>`.
    Throttled {
        /// The `Retry-After` it sends, in seconds.
        retry_after: u64,
    },
    /// Closes the connection without an answer.
    Drop,
    /// `307 Temporary Redirect` to this location (a path or an absolute URI).
    Redirect(String),
}

/// A request the fake Patchworks received, login or API call.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request method.
    pub method: Method,
    /// The request path.
    pub path: String,
    /// The query, if any.
    pub query: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The request body.
    pub body: Bytes,
    /// When it arrived, on Tokio's clock (paused in tests that pause it).
    pub received_at: Instant,
}

/// A fake Patchworks: an HTTP/1 server on `127.0.0.1:0` that issues tokens and checks them.
///
/// Started on the current Tokio runtime; stops when dropped. Defaults: it accepts
/// [`EMAIL`] and [`PASSWORD`], issues tokens that live 24 hours, answers logins at once, and
/// answers every valid API call `200` with `{"method", "path", "body_bytes"}`. See the
/// [module documentation](self) for an example.
pub struct FakePatchworks {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

struct Shared {
    state: Mutex<FakeState>,
    /// `true` while logins are held back by [`FakePatchworks::hold_logins`].
    gate: tokio::sync::watch::Sender<bool>,
}

struct FakeState {
    credentials: (String, String),
    /// The OAuth 2 clients its token endpoint accepts, compared byte for byte.
    clients: Vec<(String, String)>,
    lifetime: Duration,
    login_answer: LoginAnswer,
    login_delay: Duration,
    api_delay: Duration,
    /// How the next logins are answered, before `login_answer` applies again.
    login_queue: std::collections::VecDeque<LoginAnswer>,
    /// The next API calls whose connection is dropped without an answer.
    dropped: usize,
    api_status: Option<StatusCode>,
    /// The next API calls to fail: how many, with what status and `Retry-After`.
    api_failures: (usize, StatusCode, Option<u64>),
    /// Paths that redirect elsewhere.
    redirects: HashMap<String, String>,
    /// Paths that answer `401` to a valid token, with this `WWW-Authenticate`, if any.
    forbidden: HashMap<String, Option<String>>,
    /// Paths a gateway in front of the API answers, whatever the token: with this status, or
    /// never (`None`).
    gateway: HashMap<String, Option<StatusCode>>,
    /// The accepted API key, if any.
    api_key: Option<String>,
    /// token -> when it expires.
    tokens: HashMap<String, Instant>,
    issued: u64,
    logins: usize,
    api_calls: usize,
    unauthorized: usize,
    expired_seen: usize,
    seen: Vec<Seen>,
    /// Tokens that opened at least one API call.
    used: std::collections::HashSet<String>,
    /// The rate limit [`FakePatchworks::limit_rate`] set: at most this many requests in any
    /// window of this length, and when the last ones arrived.
    rate: Option<(usize, Duration, std::collections::VecDeque<Instant>)>,
    /// Requests answered `429` for the rate limit.
    too_many: usize,
}

/// At most this many requests are kept for [`FakePatchworks::seen`], so a long test stays small.
const SEEN_CAP: usize = 10_000;

impl FakePatchworks {
    /// Starts a fake Patchworks on `127.0.0.1` at a port the system picks.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn start() -> io::Result<Self> {
        FakePatchworks::start_on(0).await
    }

    /// Starts a fake Patchworks on `127.0.0.1:<port>` (`0`: a port the system picks), as the
    /// `fake-patchworks` binary does for another process or language.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound (the port is taken).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn start_on(port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                credentials: (EMAIL.to_owned(), PASSWORD.to_owned()),
                clients: vec![(CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())],
                lifetime: Duration::from_secs(24 * 60 * 60),
                login_answer: LoginAnswer::Token,
                login_delay: Duration::ZERO,
                api_delay: Duration::ZERO,
                login_queue: std::collections::VecDeque::new(),
                dropped: 0,
                api_status: None,
                api_failures: (0, StatusCode::SERVICE_UNAVAILABLE, None),
                rate: None,
                too_many: 0,
                redirects: HashMap::new(),
                forbidden: HashMap::new(),
                gateway: HashMap::new(),
                api_key: None,
                tokens: HashMap::new(),
                issued: 0,
                logins: 0,
                api_calls: 0,
                unauthorized: 0,
                expired_seen: 0,
                seen: Vec::new(),
                used: std::collections::HashSet::new(),
            }),
            gate: tokio::sync::watch::Sender::new(false),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(FakePatchworks {
            addr,
            shared,
            server,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/api/v1/login`, for [`AuthLayer::login_url`](crate::AuthLayer::login_url).
    pub fn login_url(&self) -> Uri {
        self.uri(LOGIN_PATH)
    }

    /// The absolute URI of `path` (which starts with `/`) on this server.
    ///
    /// # Panics
    ///
    /// If `path` is not a valid URI path.
    pub fn uri(&self, path: &str) -> Uri {
        format!("http://{}{}", self.addr, path)
            .parse()
            .expect("FakePatchworks::uri takes a path such as /api/v1/flows")
    }

    /// `http://127.0.0.1:<port>/oauth/token`: its OAuth 2 token endpoint, for
    /// [`AuthLayer::login_url`](crate::AuthLayer::login_url) with
    /// [`client_credentials`](Self::client_credentials).
    pub fn token_url(&self) -> Uri {
        self.uri(TOKEN_PATH)
    }

    /// The OAuth 2 client credentials its token endpoint accepts.
    pub fn client_credentials(&self) -> Credentials {
        Credentials::client_credentials(CLIENT_ID, CLIENT_SECRET)
    }

    /// Accepts another OAuth 2 client at the token endpoint, beside [`CLIENT_ID`]. Client ids
    /// are compared byte for byte, as token endpoints do: `Acme` and `acme` are two clients.
    pub fn add_client(&self, client_id: &str, client_secret: &str) {
        self.state()
            .clients
            .push((client_id.to_owned(), client_secret.to_owned()));
    }

    /// The credentials it accepts.
    pub fn credentials(&self) -> Credentials {
        let state = self.state();
        Credentials::new(state.credentials.0.clone(), state.credentials.1.clone())
    }

    /// A new hyper-util client for plain HTTP, with its own connection pool.
    pub fn client(&self) -> HttpClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    /// How long tokens issued from now on live (the `expires_in` it answers, rounded up to a
    /// whole second). Default: 24 hours.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = lifetime;
    }

    /// How it answers logins with the right credentials. Default: [`LoginAnswer::Token`].
    pub fn set_login_answer(&self, answer: LoginAnswer) {
        self.state().login_answer = answer;
    }

    /// How long it waits before answering a login. Default: none.
    pub fn set_login_delay(&self, delay: Duration) {
        self.state().login_delay = delay;
    }

    /// Makes `count` more of the next logins answer `status` (say 500), then answers normally
    /// again.
    pub fn fail_next_logins(&self, count: usize, status: StatusCode) {
        self.queue_login_answers(std::iter::repeat_n(LoginAnswer::Status(status), count));
    }

    /// Answers the next logins each in its turn as `answers` says (after any queued before),
    /// then as [`set_login_answer`](Self::set_login_answer) says again. A queued answer applies
    /// whatever the credentials, as a failing endpoint would.
    pub fn queue_login_answers(&self, answers: impl IntoIterator<Item = LoginAnswer>) {
        self.state().login_queue.extend(answers);
    }

    /// How many queued login answers ([`queue_login_answers`](Self::queue_login_answers)) are
    /// still to be given.
    pub fn queued_login_answers(&self) -> usize {
        self.state().login_queue.len()
    }

    /// Makes `path` answer `401` to a request with a valid token, as an API does to an account
    /// that may not use that endpoint, with `WWW-Authenticate: <challenge>` if given (for
    /// instance `Bearer error="insufficient_scope"`). A `path` ending in `*` forbids every path
    /// it begins.
    pub fn forbid(&self, path: &str, challenge: Option<&str>) {
        self.state()
            .forbidden
            .insert(path.to_owned(), challenge.map(str::to_owned));
    }

    /// Makes a gateway in front of the API answer every request to `path` (exactly) before any
    /// token is checked: with `status` (a 429 with `Retry-After: 1`), or, with `None`, never.
    /// For instance a 502 from a load balancer, or a path that hangs.
    pub fn gateway(&self, path: &str, status: Option<StatusCode>) {
        self.state().gateway.insert(path.to_owned(), status);
    }

    /// Drops the connection of `count` more of the next API calls, without an answer.
    pub fn drop_api_calls(&self, count: usize) {
        self.state().dropped += count;
    }

    /// How long it waits before answering an API call, after checking its token. Default: none.
    pub fn set_api_delay(&self, delay: Duration) {
        self.state().api_delay = delay;
    }

    /// Holds back the answers to logins (received ones and new ones) until
    /// [`release_logins`](Self::release_logins): a login in flight, for as long as a test needs.
    pub fn hold_logins(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Lets held-back logins answer.
    pub fn release_logins(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Makes the API answer `status` to every call with a valid token (for instance `401`, as an
    /// API does to an account without permission), or, with `None`, answer normally again.
    pub fn set_api_status(&self, status: Option<StatusCode>) {
        self.state().api_status = status;
    }

    /// Makes the next `count` API calls (with a valid token) answer `status`, with
    /// `Retry-After: <seconds>` if given; then it answers normally again.
    pub fn fail_api_calls(&self, count: usize, status: StatusCode, retry_after: Option<u64>) {
        self.state().api_failures = (count, status, retry_after);
    }

    /// Enforces a rate limit as Patchworks does: a request (login or API call) arriving when
    /// `limit` others arrived within the last `per` (a sliding window) is answered `429 Too
    /// Many Requests` with `Retry-After: 1`, and not counted. See
    /// [`too_many`](Self::too_many).
    pub fn limit_rate(&self, limit: usize, per: Duration) {
        self.state().rate = Some((limit, per, std::collections::VecDeque::new()));
    }

    /// How many requests the [rate limit](Self::limit_rate) answered `429`.
    pub fn too_many(&self) -> usize {
        self.state().too_many
    }

    /// Makes `from` (a path) answer `301 Moved Permanently` to `to` (a path or an absolute URI),
    /// without looking at the token.
    pub fn redirect(&self, from: &str, to: &str) {
        self.state()
            .redirects
            .insert(from.to_owned(), to.to_owned());
    }

    /// Accepts `key` as an API key: sent as it is in `Authorization`, it opens the API.
    pub fn accept_api_key(&self, key: &str) {
        self.state().api_key = Some(key.to_owned());
    }

    /// Revokes every token issued so far: the API answers `401` to them.
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Login requests received, whatever their outcome.
    pub fn logins(&self) -> usize {
        self.state().logins
    }

    /// API requests received (every request but logins), whatever their outcome.
    pub fn api_calls(&self) -> usize {
        self.state().api_calls
    }

    /// API requests answered `401` because their token was missing, unknown, revoked or expired.
    pub fn unauthorized(&self) -> usize {
        self.state().unauthorized
    }

    /// API requests that carried one of its tokens after that token had expired.
    pub fn expired_tokens_seen(&self) -> usize {
        self.state().expired_seen
    }

    /// How many of the tokens it issued opened at least one API call: the logins a client
    /// needed, however many it made.
    pub fn tokens_used(&self) -> usize {
        self.state().used.len()
    }

    /// The requests received so far, oldest first (the first 10,000).
    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.shared.state()
    }
}

impl fmt::Debug for FakePatchworks {
    /// Shows where it listens and what it saw; never the password it accepts or a token it
    /// issued.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("FakePatchworks")
            .field("addr", &self.addr)
            .field("email", &state.credentials.0)
            .field("password", &"<redacted>")
            .field("logins", &state.logins)
            .field("api_calls", &state.api_calls)
            .field("unauthorized", &state.unauthorized)
            .field("tokens_issued", &state.issued)
            .finish_non_exhaustive()
    }
}

impl Drop for FakePatchworks {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs `future` with a paused Tokio clock held still.
///
/// A paused clock jumps to the next timer whenever the runtime has nothing to run, and a task
/// waiting on a socket counts as nothing to run: a login timeout would fire while the fake
/// server is answering. Holding the clock (Tokio does so while a `spawn_blocking` task runs)
/// lets real I/O finish in zero paused time; move time with `tokio::time::sleep` outside.
///
/// Do not hold it across a login that has to wait: a retry after a failed attempt, or a
/// `Retry-After`. That wait is a sleep on the held clock, and never ends.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, StatusCode};
/// use http_body_util::Full;
/// use patchworks_auth::{test_util::{hold_clock, FakePatchworks}, AuthLayer};
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let patchworks = FakePatchworks::start().await?;
/// patchworks.set_token_lifetime(Duration::from_secs(3600));
/// let client = AuthLayer::new(patchworks.credentials())
///     .login_url(patchworks.login_url())
///     .layer(patchworks.client());
/// let get = || Request::get(patchworks.uri("/api/v1/flows")).body(Full::<Bytes>::default());
///
/// hold_clock(client.clone().oneshot(get()?)).await?;        // I/O: the clock stands still
/// tokio::time::sleep(Duration::from_secs(2 * 3600)).await;  // two hours pass at once
/// hold_clock(client.oneshot(get()?)).await?;
/// assert_eq!(patchworks.logins(), 2);                        // the token had expired
/// assert_eq!(patchworks.expired_tokens_seen(), 0);
/// # Ok(())
/// # }
/// ```
pub async fn hold_clock<F: Future>(future: F) -> F::Output {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || {
        let _ = released.recv();
    });
    let output = future.await;
    drop(release);
    let _ = holder.await;
    output
}
