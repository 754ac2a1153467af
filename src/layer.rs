//! The layer and its builder.

use crate::{
    budget::Budget,
    cache::Cache,
    config::{BudgetChoice, Config},
    credentials::{Credentials, Form, Secret},
    scope::Scope,
    service::Auth,
    store::TokenStore,
    token::TokenState,
};
use http::Uri;
use std::{fmt, sync::Arc, time::Duration};
use tower_layer::Layer;

/// The production login endpoint.
pub const DEFAULT_LOGIN_URL: &str = "https://svc-fabric.pwks.co/api/v1/login";

/// The login URL of [`Credentials::username`]: Patchworks' Fabric login, which takes
/// `{"username", "password"}`.
pub const DEFAULT_USERNAME_LOGIN_URL: &str = "https://app.wearepatchworks.com/fabric/api/login";

/// [`Layer`](tower_layer::Layer) that logs in to Patchworks and adds
/// `Authorization: Bearer <token>` to requests for the Patchworks API.
///
/// Building the layer does no I/O: the first request that needs a token logs in, through the
/// wrapped service itself, and every later request reuses the token until it is renewed. See
/// the [crate documentation](crate) for what happens on expiry, on a 401 and when a login fails.
///
/// Every service this layer makes, and every clone of them, shares one token: a layer used for
/// several clients logs in once for all of them.
///
/// # Clones and builder methods
///
/// A clone of the layer shares its token cache. A builder method returns a layer with a new,
/// empty cache, because its configuration differs: `layer.clone().login_timeout(..)` logs in
/// on its own. Configure the layer first, then clone it.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use patchworks_auth::{test_util::FakePatchworks, AuthLayer, Credentials};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// // A fake Patchworks on loopback; in production, leave `login_url` at its default.
/// let patchworks = FakePatchworks::start().await?;
/// let client = ServiceBuilder::new()
///     .layer(AuthLayer::new(Credentials::new("ops@example.com", "correct horse battery staple"))
///         .login_url(patchworks.login_url()))
///     .service(patchworks.client());
///
/// let request = Request::get(patchworks.uri("/api/v1/flows")).body(Full::<Bytes>::default())?;
/// let response = client.clone().oneshot(request).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(patchworks.logins(), 1);
///
/// let request = Request::get(patchworks.uri("/api/v1/flows")).body(Full::default())?;
/// client.oneshot(request).await?;
/// assert_eq!(patchworks.logins(), 1); // the token was reused
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    cache: Arc<Cache>,
}

impl AuthLayer {
    /// Default for [`refresh_before`](Self::refresh_before): 5 minutes.
    pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
    /// Default for [`login_timeout`](Self::login_timeout): 30 seconds.
    pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default for [`replay_body_limit`](Self::replay_body_limit): 64 KiB.
    pub const DEFAULT_REPLAY_BODY_LIMIT: usize = 64 * 1024;

    /// A layer that logs in with `credentials` at the production login endpoint
    /// (`https://svc-fabric.pwks.co/api/v1/login`; the Fabric login for
    /// [`Credentials::username`]). [OAuth 2 client
    /// credentials](Credentials::client_credentials) have no default: give their token
    /// endpoint to [`login_url`](Self::login_url).
    pub fn new(credentials: Credentials) -> Self {
        let username = matches!(
            credentials.secret,
            Secret::Login {
                form: Form::Username,
                ..
            }
        );
        let login_url = Uri::from_static(if username {
            DEFAULT_USERNAME_LOGIN_URL
        } else {
            DEFAULT_LOGIN_URL
        });
        AuthLayer::from_config(Config {
            credentials,
            login_url,
            login_url_given: false,
            trusted: Vec::new(),
            refresh_before: Self::DEFAULT_REFRESH_BEFORE,
            login_timeout: Self::DEFAULT_LOGIN_TIMEOUT,
            replay_body_limit: Self::DEFAULT_REPLAY_BODY_LIMIT,
            store: None,
            store_key: None,
            store_timeout: crate::store::STORE_TIMEOUT,
            budget: BudgetChoice::Unset,
        })
    }

    /// The layer for `config`, judged by the one configuration rule ([`Config::judge`]) in
    /// [`Cache::new`]. Its error is logged when the layer is put to use
    /// ([`Cache::tell_config`]): a builder chain passes through states that are not wrong
    /// (client credentials before their `login_url`).
    fn from_config(config: Config) -> Self {
        AuthLayer {
            cache: Cache::new(config),
        }
    }

    /// The error every call of this layer fails with, unsent, if its configuration is refused
    /// (see the crate docs' "Configuration errors"): for a program that would rather not start.
    ///
    /// ```
    /// use patchworks_auth::{AuthLayer, Credentials};
    ///
    /// let layer = AuthLayer::new(Credentials::api_key("pk\r\nX-Evil: 1"));
    /// assert!(layer.check_config().unwrap_err().is_config());
    /// assert!(AuthLayer::new(Credentials::api_key("pk_live_4f9a")).check_config().is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// The configuration's [`Error`](crate::Error), for which
    /// [`is_config`](crate::Error::is_config) is `true`.
    pub fn check_config(&self) -> Result<(), crate::Error> {
        self.cache.judged.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    fn map_config(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.cache.config.clone();
        f(&mut config);
        AuthLayer::from_config(config)
    }

    /// Logs in at another endpoint: staging, a self-hosted gateway, a local test server.
    ///
    /// The login URL's origin is trusted with the token, besides the Patchworks hosts.
    ///
    /// The URL must be absolute and `https`, or `http` to a loopback host (`127.0.0.0/8`, `::1`,
    /// `localhost`) for tests and local development, so that the password never crosses a
    /// network unencrypted. Any other URL is logged as an error where the layer is put to use,
    /// and makes [`Auth::login`](crate::Auth::login) and every request fail with an
    /// [`Error`](crate::Error) for which [`is_config`](crate::Error::is_config) is `true`, without
    /// a byte sent. To refuse it where the layer is built, use
    /// [`try_login_url`](Self::try_login_url).
    pub fn login_url(self, login_url: Uri) -> Self {
        self.map_config(|config| {
            config.login_url = login_url;
            config.login_url_given = true;
        })
    }

    /// [`login_url`](Self::login_url), refusing a URL it would not log in at.
    ///
    /// # Errors
    ///
    /// An [`Error`](crate::Error) for which [`is_config`](crate::Error::is_config) is `true`
    /// when the URL is not absolute, carries a user name or password, or is plain-text `http`
    /// to a host that is not loopback. Its message says what to use instead.
    ///
    /// ```
    /// use patchworks_auth::{AuthLayer, Credentials};
    ///
    /// let layer = AuthLayer::new(Credentials::new("ops@example.com", "pw"));
    /// let error = layer.try_login_url("http://staging.example.com/login".parse().unwrap());
    /// assert!(error.unwrap_err().is_config());
    /// ```
    pub fn try_login_url(self, login_url: Uri) -> Result<Self, crate::Error> {
        Scope::new(&login_url, &[])?;
        Ok(self.login_url(login_url))
    }

    /// Sends the token (or the API key) to `origin` too, besides the login URL's origin and the
    /// Patchworks hosts: the API of an OAuth 2 deployment whose token endpoint is on another
    /// origin, or a gateway in front of the Patchworks API.
    ///
    /// `origin` is a scheme, a host and a port (`https://api.example.com`, `:443` implied), with
    /// no path: `https`, or `http` to a loopback host, as for the
    /// [login URL](Self::login_url). Any other is the layer's configuration error (logged at
    /// ERROR where the layer is put to use, every call failing with [`is_config`](crate::Error::is_config), unsent); to
    /// refuse it here, use [`try_trust_origin`](Self::try_trust_origin). Call it once for each
    /// origin. A request to an origin that is not trusted goes through untouched, and is said at
    /// DEBUG (at most once a minute).
    ///
    /// ```
    /// use patchworks_auth::{AuthLayer, Credentials};
    ///
    /// let layer = AuthLayer::new(Credentials::client_credentials("inbound-client", "s3cret"))
    ///     .login_url("https://auth.example.com/oauth/token".parse().unwrap())
    ///     .trust_origin("https://api.example.com".parse().unwrap());
    /// assert!(layer.check_config().is_ok());
    /// ```
    pub fn trust_origin(self, origin: Uri) -> Self {
        self.map_config(|config| config.trusted.push(origin))
    }

    /// [`trust_origin`](Self::trust_origin), refusing an origin the token may not go to.
    ///
    /// # Errors
    ///
    /// An [`Error`](crate::Error) for which [`is_config`](crate::Error::is_config) is `true`
    /// when `origin` is not an absolute `http(s)` origin, carries a user name or password or a
    /// path, or is plain-text `http` to a host that is not loopback.
    ///
    /// ```
    /// use patchworks_auth::{AuthLayer, Credentials};
    ///
    /// let layer = AuthLayer::new(Credentials::api_key("pk_live_4f9a"));
    /// let error = layer.try_trust_origin("http://gateway.example.com".parse().unwrap());
    /// assert!(error.unwrap_err().is_config());
    /// ```
    pub fn try_trust_origin(self, origin: Uri) -> Result<Self, crate::Error> {
        crate::scope::trusted_origin(&origin)?;
        Ok(self.trust_origin(origin))
    }

    /// How long before its expiry a token is renewed. Default: 5 minutes.
    ///
    /// Renewal runs in the background: requests go on with the still-valid token meanwhile. The
    /// window is capped at half the token's lifetime, so a short-lived token is renewed at most
    /// once per half-lifetime, never on every request.
    pub fn refresh_before(self, refresh_before: Duration) -> Self {
        self.map_config(|config| config.refresh_before = refresh_before)
    }

    /// The longest one login may take, its retries included, from sending the first request to
    /// reading the answer. Default: 30 seconds.
    ///
    /// Within it, an attempt that fails for a while (5xx, 429, no connection) is tried again
    /// after a jittered back-off or the `Retry-After` asked for. An attempt is never cut before
    /// the timeout: one that has not answered after a third of it gets a second beside it, and
    /// the first good answer wins. Callers wait, and fail only when the timeout is spent.
    ///
    /// The timeout belongs to the login, not to the request that started it: a caller that
    /// gives up (or a `tower::timeout` around the layer) does not abort a login others wait on.
    pub fn login_timeout(self, login_timeout: Duration) -> Self {
        self.map_config(|config| config.login_timeout = login_timeout)
    }

    /// The largest request body kept so that the request can be replayed after a 401.
    /// Default: 64 KiB.
    ///
    /// Bodies with a known size up to this limit are read before the request is sent and kept
    /// until its response arrives; larger or streaming bodies are sent as they are, and if one
    /// meets a 401 that 401 is returned once the token has been renewed. `0` keeps no body, so
    /// only requests without one are replayed.
    pub fn replay_body_limit(self, limit: usize) -> Self {
        self.map_config(|config| config.replay_body_limit = limit)
    }

    /// Shares the token with every process that uses the same store and account: one login for
    /// the whole fleet, and for a CLI or cron job, one login a day instead of one a run.
    ///
    /// The store is read only when this process has no usable token (its first request, an
    /// expired token, a 401, a renewal), never on a request with a fresh token. A login is
    /// coordinated through the store's lock, so that processes starting together (or seeing
    /// the same revocation) log in once between them. The store never fails a request: when it
    /// does not answer within a few hundred milliseconds, the process logs in by itself. See
    /// [`store`](crate::store) for the stores, and for what is stored (sealed, never the
    /// password).
    ///
    /// An API key needs no store, and is never stored.
    ///
    /// ```
    /// use patchworks_auth::{store::FileStore, AuthLayer, Credentials};
    /// use std::path::PathBuf;
    ///
    /// // Your user's cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), never `temp_dir()`,
    /// // which every user can write to.
    /// let cache = std::env::var_os("XDG_CACHE_HOME")
    ///     .map(PathBuf::from)
    ///     .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
    ///     .expect("a home directory");
    /// let layer = AuthLayer::new(Credentials::new("ops@example.com", "hunter2"))
    ///     .store(FileStore::new(cache.join("my-app").join("patchworks-token")));
    /// ```
    pub fn store(self, store: impl TokenStore) -> Self {
        let store: Arc<dyn TokenStore> = Arc::new(store);
        self.map_config(|config| config.store = Some(store))
    }

    /// Seals the token in the [store](Self::store) with this 256-bit key instead of one
    /// derived from the credentials.
    ///
    /// By default the key is derived from the email and password with Argon2id and a random
    /// salt kept with the entry: every process with the same credentials opens the entry, and
    /// the entry gives nothing to test a password guess against but a memory-hard hash. A key of
    /// your own (from a secrets manager) skips that derivation; every process sharing the store
    /// needs the same key.
    pub fn store_key(self, key: [u8; 32]) -> Self {
        self.map_config(|config| config.store_key = Some(key))
    }

    /// The most a [store](Self::store) may add to a login: its operations for that login (loads
    /// and the lock) share this timeout, and past it the process logs in as without a store.
    /// Default: 300 ms.
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.map_config(|config| config.store_timeout = timeout)
    }

    /// Keeps the requests sent to Patchworks (API calls, logins, replays) within `budget`, in
    /// this process and, with a [store](Self::store), across every process sharing it: see
    /// [`budget`](crate::budget). Default: none, except in
    /// `https_client()` (feature `rustls`), which applies `Budget::per_minute(240)`.
    pub fn budget(self, budget: Budget) -> Self {
        self.map_config(|config| config.budget = BudgetChoice::On(budget))
    }

    /// `budget` unless the builder chose one (or none).
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn budget_or(self, budget: Budget) -> Self {
        match self.cache.config.budget {
            BudgetChoice::Unset => self.budget(budget),
            BudgetChoice::Off | BudgetChoice::On(_) => self,
        }
    }

    /// No API budget, not even the ready client's default: for an account whose limit is
    /// kept some other way.
    pub fn no_budget(self) -> Self {
        self.map_config(|config| config.budget = BudgetChoice::Off)
    }
}

impl AuthLayer {
    /// The token cache every service (and middleware) made from this layer shares.
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn cache(&self) -> Arc<Cache> {
        self.cache.tell_config();
        self.cache.clone()
    }

    /// What the layer knows of its token (shared by every service it made), without the token.
    pub fn state(&self) -> TokenState {
        self.cache.state()
    }

    /// Follows what the layer knows of its token: the receiver is marked changed after every
    /// login outcome and every token discarded, so a service can await its first token at
    /// start-up, alert when a background renewal fails (`last_error`), or log each renewal,
    /// without polling [`state`](Self::state).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<TokenState> {
        self.cache.watch()
    }

    /// What the API [budget](crate::budget) counted in this process: requests that waited for
    /// their turn, the longest wait, 429 pauses, refusals, and the requests waiting now. All
    /// zero without a budget.
    pub fn budget_state(&self) -> crate::budget::BudgetState {
        self.cache.budget_state()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.cache.tell_config();
        Auth::new(inner, self.cache.clone())
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("cache", &self.cache)
            .finish()
    }
}
