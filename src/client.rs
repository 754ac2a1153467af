//! A ready HTTPS client: [`PatchworksClient`], from [`AuthLayer::https_client`].

use crate::{
    body::Body, bounds::AnyBody, retry::RetryPolicy, service::Auth, AuthLayer, Error, TokenState,
};
use http::{uri::PathAndQuery, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tower::{util::BoxCloneSyncService, BoxError, Service, ServiceBuilder};
use tower_http::follow_redirect::FollowRedirectLayer;

/// Where relative request paths go by default: the Patchworks Core API.
pub const DEFAULT_BASE_URL: &str = "https://svc-fabric.pwks.co/api/v1/";

/// The client the layer sends through: hyper-util, each send timed out.
type Bare = tower::timeout::Timeout<Client<HttpsConnector<HttpConnector>, Body>>;

/// A Patchworks API client, ready to use: hyper-util over rustls (ring, the webpki roots,
/// HTTP/1.1, and HTTP/2 with the cargo feature `http2`), with the crate's layer order on top,
/// the timeout below the layer:
///
/// ```text
/// redirects (each hop re-checked) → RetryPolicy → AuthLayer → timeout (30 s a send) → hyper-util
/// ```
///
/// The timeout bounds each send (a request, a replay, a login attempt), not the whole call: a
/// call may also wait for a login (bounded by [`AuthLayer::login_timeout`]) and for its turn in
/// the API [budget](crate::budget) (bounded by its `max_wait`). Past `max_wait` a request fails,
/// unsent, with an [`Error`] for which [`is_budget_exhausted`](Error::is_budget_exhausted) is
/// `true`, and the retry policy retries it (any method: it was never sent). Were the timeout
/// around the whole call, as in the crate's general layer order, a request over the budget
/// would fail as tower's "request timed out" when its `max_wait` and the timeout are alike
/// (both 30 s by default), and never be retried. Bound a whole call with
/// `tokio::time::timeout` around it.
///
/// Made by [`AuthLayer::https_client`] (cargo feature `rustls`). It is `Clone + Send + Sync +
/// 'static`, a `Service<Request<B>>` for any request body `B` ([`AnyBody`]: `Full<Bytes>`,
/// `Empty<Bytes>`, `String`, axum's `Body`, a forwarded `Incoming`) answering
/// `Response<Incoming>` with [`BoxError`]s, so it sits in axum state as it is, and a handler
/// forwards its request's body without collecting it. Clones share one connection pool and one
/// token. Bytes are retried and replayed after a 401; a streamed body is sent once (see
/// [`body`](crate::body)).
///
/// A request whose URI is a path (`/flows?page=2`) goes to the [base URL](Self::base_url)
/// followed by that path: `https://svc-fabric.pwks.co/api/v1/flows?page=2` by default.
///
/// ```no_run
/// use http::Request;
/// use patchworks_auth::{body::Body, AuthLayer, Credentials};
/// use tower::ServiceExt;
///
/// # async fn run() -> Result<(), tower::BoxError> {
/// let client = AuthLayer::new(Credentials::from_env()?).https_client();
/// client.login().await?; // refuse to start with bad credentials
/// let flows = client.oneshot(Request::get("/flows").body(Body::empty())?).await?;
/// # Ok(())
/// # }
/// ```
///
/// A body that is not one is refused when the code is compiled:
///
/// ```compile_fail,E0277
/// # use http::Request;
/// # use patchworks_auth::{AuthLayer, Credentials};
/// # use tower::ServiceExt;
/// # async fn run() -> Result<(), tower::BoxError> {
/// let client = AuthLayer::new(Credentials::new("ops@example.com", "pw")).https_client();
/// let flows = client.oneshot(Request::get("/flows").body(b"{}".to_vec())?).await?;
/// // error[E0277]: the trait bound `Vec<u8>: http_body::Body` is not satisfied
/// // (bytes go in a `Full<Bytes>`: `.body(Full::from(bytes))`)
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PatchworksClient {
    stack: BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>,
    /// The layer's service, for [`login`](Self::login) and [`state`](Self::state).
    auth: Auth<Bare>,
    base: Uri,
    /// Why the base URL cannot work, if it cannot: every call fails with it.
    refused: Option<Error>,
}

impl AuthLayer {
    /// A ready HTTPS client with this layer: see [`PatchworksClient`].
    ///
    /// Each send times out after 30 s; requests follow up to 20 redirects (each hop passes the
    /// origin check again: the token goes only where it belongs), and are retried by a default
    /// [`RetryPolicy`] (idempotent methods and budget refusals, at most 3 times).
    ///
    /// It keeps an API [budget](crate::budget) of 240 requests a minute
    /// ([`Budget::per_minute(240)`](crate::budget::Budget::per_minute)), what Patchworks allows
    /// its Growth and Professional plans, shared with every process of a [store](Self::store),
    /// unless this layer was given another ([`budget`](Self::budget)) or none
    /// ([`no_budget`](Self::no_budget)).
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn https_client(self) -> PatchworksClient {
        let layer = self.budget_or(crate::budget::Budget::per_minute(240));
        // The webpki roots are compiled in: no platform verifier, no file to find.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1();
        // Opt-in: 240 requests a minute fit one kept-alive HTTP/1.1 connection (Cargo.toml).
        #[cfg(feature = "http2")]
        let https = https.enable_http2();
        let https = https.build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let bare: Bare = tower::timeout::Timeout::new(client, PatchworksClient::TIMEOUT);
        let auth = tower_layer::Layer::layer(&layer, bare);
        let stack = ServiceBuilder::new()
            .layer(FollowRedirectLayer::new())
            .retry(RetryPolicy::new())
            .service(auth.clone());
        PatchworksClient {
            stack: BoxCloneSyncService::new(stack),
            auth,
            base: Uri::from_static(DEFAULT_BASE_URL),
            refused: None,
        }
    }
}

impl PatchworksClient {
    /// The timeout of one send: a request, a replay after a 401, a login attempt (see
    /// [`PatchworksClient`] for why not the whole call).
    pub const TIMEOUT: Duration = Duration::from_secs(30);

    /// Sends path-only requests to `base` (for instance a staging API) instead of
    /// [`DEFAULT_BASE_URL`].
    ///
    /// A request's path is appended to the base's path, not resolved against it as a URL
    /// reference would be: with the default base, `/flows?page=2` goes to
    /// `https://svc-fabric.pwks.co/api/v1/flows?page=2` (a reference would give `/flows`). The
    /// joined path is normalized as RFC 3986 §6.2.2 has it (`%2e` is `.`, in any case; `.` and
    /// `..` segments removed) and sent so. A path that would then leave the base's path
    /// (`/../admin`, `/%2e%2E/admin`), or that holds what servers split or resolve
    /// differently (a backslash, an encoded `/` or `\` such as `%2F`, a `..;` segment), is
    /// refused unsent with an [`Error`] for which [`is_config`](Error::is_config) is `true`.
    /// The query is sent as it is. An absolute URI is sent as it is.
    ///
    /// Its origin must be one the layer trusts with the token (a Patchworks host over `https`,
    /// the login URL's, or one given to [`AuthLayer::trust_origin`]): any other would get
    /// requests without the token, and their 401s. Such a base makes every call and [`login`](Self::login) fail
    /// with an [`Error`] for which [`is_config`](Error::is_config) is `true`, saying to set
    /// [`AuthLayer::login_url`] to that origin.
    pub fn base_url(mut self, base: Uri) -> Self {
        self.refused = self.check_base(&base).err();
        if let Some(error) = &self.refused {
            tracing::error!(target: "patchworks_auth", %error, "invalid base URL");
        }
        self.base = base;
        self
    }

    /// [`base_url`](Self::base_url), refusing a base whose origin would not get the token.
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) is `true`, saying which origin to
    /// log in at.
    pub fn try_base_url(self, base: Uri) -> Result<Self, Error> {
        self.check_base(&base)?;
        Ok(self.base_url(base))
    }

    fn check_base(&self, base: &Uri) -> Result<(), Error> {
        if self.auth.trusts(base) {
            return Ok(());
        }
        Err(Error::config(format!(
            "the base URL's origin ({}://{}) does not get the token; trust it \
             (AuthLayer::trust_origin), log in at that origin (AuthLayer::login_url) or use a \
             Patchworks host over https",
            base.scheme_str().unwrap_or("?"),
            base.authority().map_or("?", |authority| authority.host()),
        )))
    }

    /// Logs in now unless a usable token is cached, and waits for it: call it at start-up to
    /// refuse to start with bad credentials or an unreachable login endpoint.
    ///
    /// # Errors
    ///
    /// The login's [`Error`].
    pub async fn login(&self) -> Result<(), Error> {
        if let Some(error) = &self.refused {
            return Err(error.clone());
        }
        self.auth.login::<Body>().await
    }

    /// What the layer knows of its token, without the token.
    pub fn state(&self) -> TokenState {
        self.auth.state()
    }

    /// Follows what the layer knows of its token: see [`AuthLayer::watch`](crate::AuthLayer::watch).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<TokenState> {
        self.auth.watch()
    }

    /// What the API budget counted in this process: see
    /// [`AuthLayer::budget_state`](crate::AuthLayer::budget_state).
    pub fn budget_state(&self) -> crate::budget::BudgetState {
        self.auth.budget_state()
    }

    /// `uri` made absolute against the base URL (its path appended to the base's), if it is a
    /// path: `Ok(None)` for an absolute URI, an error for a path that would leave the base.
    fn resolve(&self, uri: &Uri) -> Result<Option<Uri>, Error> {
        if uri.authority().is_some() {
            return Ok(None);
        }
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let refused = |why: &str| {
            Error::config(format!(
                "the path {} cannot be sent under the base URL {}: {why}; send an absolute URI \
                 to go elsewhere",
                uri.path(),
                self.base
            ))
        };
        let joined = crate::path::join(self.base.path(), path).map_err(refused)?;
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(joined.parse().map_err(|_| refused("not a valid path"))?);
        Uri::from_parts(parts)
            .map(Some)
            .map_err(|_| refused("not a valid URI"))
    }
}

impl<B: AnyBody> Service<Request<B>> for PatchworksClient {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(error) = self.refused.clone() {
            return Box::pin(std::future::ready(Err(error.into())));
        }
        let mut request = request.map(Body::new);
        match self.resolve(request.uri()) {
            Ok(Some(uri)) => *request.uri_mut() = uri,
            Ok(None) => {}
            Err(error) => return Box::pin(std::future::ready(Err(error.into()))),
        }
        self.stack.call(request)
    }
}

impl fmt::Debug for PatchworksClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatchworksClient")
            .field("base", &self.base)
            .field("auth", &self.auth)
            .finish()
    }
}
