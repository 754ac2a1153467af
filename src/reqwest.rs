//! The layer for reqwest: [`AuthMiddleware`], a [`Middleware`].
//!
//! It shares the token core with [`AuthLayer`]: one login at a time however many requests wait,
//! background renewal, the 401 rules (a request replayed once after its token was renewed), the
//! origin scope, the back-off after a failed login, and the [store](crate::store) if the layer has
//! one. Logins go through the `reqwest::Client` you give it.
//!
//! ```no_run
//! use patchworks_auth::{reqwest::AuthMiddleware, AuthLayer, Credentials};
//! use reqwest_middleware::ClientBuilder;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // No redirects below the layer: the token and the password never follow one.
//! let client = reqwest::Client::builder()
//!     .redirect(reqwest::redirect::Policy::none())
//!     .build()?;
//! let layer = AuthLayer::new(Credentials::from_env()?);
//! let client = ClientBuilder::new(client.clone())
//!     .with(AuthMiddleware::new(layer, client))
//!     .build();
//! let flows = client
//!     .get("https://svc-fabric.pwks.co/api/v1/flows")
//!     .send()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Build the client with `redirect::Policy::none()` (reqwest follows up to 10 redirects by
//! default): a redirect below the middleware would carry the `Authorization` header to wherever
//! it points, and the login's password with it. A login answered by a redirect is refused.
//!
//! A request whose body cannot be cloned (a stream) is sent once; if it meets a 401, the token is
//! renewed and the 401 returned.
//!
//! The layer's own failures come back as `reqwest_middleware::Error::Middleware`, whose
//! `anyhow::Error` downcasts to [`Error`].

use crate::{
    cache::{Cache, Route, Token, Transport},
    error::{Error, Kind},
    login,
    login::LoginFn,
    token::Endpoint,
    AuthLayer,
};
use http::{header::AUTHORIZATION, StatusCode, Uri};
use reqwest_middleware::{Middleware, Next};
use std::{fmt, future::Future, pin::Pin, sync::Arc};

/// A [`Middleware`] that logs in to Patchworks and adds
/// `Authorization: Bearer <token>` to requests for the Patchworks API.
///
/// Made from an [`AuthLayer`] (its credentials, login URL, timeouts, store) and the
/// `reqwest::Client` to log in with. See the [module documentation](self).
#[derive(Clone)]
pub struct AuthMiddleware {
    cache: Arc<Cache>,
    login: LoginFn,
    /// The client checks of the token are sent with (see [`Cache::unauthorized`]).
    client: reqwest::Client,
}

impl AuthMiddleware {
    /// A middleware with the configuration of `layer`, logging in through `client`.
    ///
    /// It shares its token with `layer` and every service the layer made.
    pub fn new(layer: AuthLayer, client: reqwest::Client) -> Self {
        let cache = layer.cache();
        let login = login_fn(&cache.login, client.clone());
        AuthMiddleware {
            cache,
            login,
            client,
        }
    }

    /// What the middleware knows of its token, without the token.
    pub fn state(&self) -> crate::TokenState {
        self.cache.state()
    }

    /// Follows what the layer knows of its token: see [`AuthLayer::watch`](crate::AuthLayer::watch).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<crate::TokenState> {
        self.cache.watch()
    }

    /// What the API budget counted in this process: see
    /// [`AuthLayer::budget_state`](crate::AuthLayer::budget_state).
    pub fn budget_state(&self) -> crate::budget::BudgetState {
        self.cache.budget_state()
    }

    async fn send(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let uri = request.url().as_str().parse::<Uri>().ok();
        match self.cache.route(request.headers(), uri.as_ref()) {
            Route::Authorize => {}
            Route::Untouched => return next.run(request, extensions).await,
            Route::Refused(error) => return Err(middleware_error(error)),
        }
        // As the tower layer's requests that wait: the token first (a login if one is
        // needed), then the budget's unit, at the moment of sending (a request waiting for a
        // login holds no unit), then the token as it is once the unit came (the wait may have
        // made it due, or replaced it).
        let cache = &self.cache;
        let (_, first) = cache
            .acquire(self.login.clone())
            .await
            .map_err(middleware_error)?;
        let spent = cache.spend().await.map_err(middleware_error)?;
        let (token, after) = cache
            .acquire(self.login.clone())
            .await
            .map_err(middleware_error)?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, token.header.clone());
        let response = self.sent(token, request, extensions, next, spent).await;
        for after in [first, after].into_iter().flatten() {
            after.await;
        }
        response
    }

    /// Sends a request that carries `token`; a 401 goes to the driver's 401 path, as for the
    /// tower layer.
    async fn sent(
        &self,
        token: Arc<Token>,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
        spent: crate::budget::Spent,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let replay = request.try_clone();
        let (method, url) = (request.method().clone(), request.url().clone());
        // Made only for an answer the core wants, or a 401, as the tower layer does.
        let endpoint = || Endpoint {
            method: method.clone(),
            origin: crate::token::origin(
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.port(),
            ),
            path: url.path().to_owned(),
        };
        let copy = extensions.clone();
        let mut first = Via::First(next.clone(), extensions);
        let response = self.cache.send_spent(&mut first, request, spent).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            let answer = (response.status(), response.headers());
            self.cache.answered(token.generation, answer, endpoint);
            return Ok(response);
        }
        let endpoint = endpoint();
        let (client, origin) = (&self.client, url);
        let check = move || {
            let via = Via::Client(client.clone());
            self.cache.check_fn(via, probe(origin.clone()))
        };
        let login = || self.login.clone();
        let replays = || replay.as_ref().and_then(reqwest::Request::try_clone);
        let (mut again, kept) = (Via::Again(next, copy), replay.is_some());
        let refused = (token.generation, &endpoint);
        let cache = &self.cache;
        (cache.recover(&mut again, refused, response, replays, kept, login, check)).await
    }
}

/// Where the driver sends a request (its [`Transport`]): on down the middleware chain, with the
/// request's own extensions for its first send and a copy of them for each replay; or, for the
/// checks of a token, by the middleware's client (a check outlives the request that started
/// it, and the chain with it).
enum Via<'a> {
    First(Next<'a>, &'a mut http::Extensions),
    Again(Next<'a>, http::Extensions),
    Client(reqwest::Client),
}

impl Transport for Via<'_> {
    type Request = reqwest::Request;
    type Response = reqwest::Response;
    type Error = reqwest_middleware::Error;

    fn error(error: Error) -> Self::Error {
        middleware_error(error)
    }

    fn headers(request: &mut reqwest::Request) -> &mut http::HeaderMap {
        request.headers_mut()
    }

    fn method(request: &mut reqwest::Request) -> &mut http::Method {
        request.method_mut()
    }

    fn answer(response: &reqwest::Response) -> (StatusCode, &http::HeaderMap) {
        (response.status(), response.headers())
    }

    async fn ready(&mut self) -> reqwest_middleware::Result<()> {
        Ok(())
    }

    async fn call(
        &mut self,
        request: reqwest::Request,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        match self {
            Via::First(next, extensions) => next.clone().run(request, extensions).await,
            Via::Again(next, extensions) => {
                next.clone().run(request, &mut extensions.clone()).await
            }
            Via::Client(client) => Ok(client.execute(request).await?),
        }
    }
}

/// The check's request: a `GET` to `path` on `origin`, without a query.
fn probe(mut origin: reqwest::Url) -> impl FnOnce(&str) -> Option<reqwest::Request> + Send {
    move |path| {
        origin.set_path(path);
        origin.set_query(None);
        Some(reqwest::Request::new(http::Method::GET, origin))
    }
}

/// The layer's own failures, as `reqwest_middleware::Error::Middleware`: its `anyhow::Error`
/// downcasts to [`Error`].
fn middleware_error(error: Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(error)
}

/// Written out as `async_trait` expands it (the trait is declared with it), so that the crate
/// needs no `async-trait` dependency of its own.
impl Middleware for AuthMiddleware {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: reqwest::Request,
        extensions: &'life1 mut http::Extensions,
        next: Next<'life2>,
    ) -> Pin<
        Box<
            dyn Future<Output = reqwest_middleware::Result<reqwest::Response>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.send(request, extensions, next))
    }
}

impl fmt::Debug for AuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("cache", &self.cache)
            .finish()
    }
}

/// Logs in once through `client`.
fn login_fn(login: &Arc<login::Login>, client: reqwest::Client) -> LoginFn {
    login::login_through(login, move || {
        let client = client.clone();
        move |request: http::Request<reqwest::Body>| async move {
            let transport = |error| Error::with_source(Kind::Transport, error);
            let request = reqwest::Request::try_from(request).map_err(transport)?;
            let login_url = request.url().clone();
            let response = client
                .execute(request)
                .await
                .map_err(|error| transport(error.without_url()))?;
            if response.url() != &login_url {
                // The client followed a redirect: the password went along, the token is not
                // the login URL's.
                return Err(Error::new(Kind::Redirected(None)));
            }
            Ok(http::Response::from(response))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reqwest middleware and the tower layer may share one cache: they spell an endpoint's
    /// origin the same way.
    #[test]
    fn both_adapters_spell_an_origin_alike() {
        for url in [
            "https://Core.WeArePatchworks.com/api/v1/flows",
            "https://core.wearepatchworks.com:443/api/v1/flows",
            "http://127.0.0.1:4000/x",
            "http://[::1]:3000/x",
            "http://localhost/x",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            let host = parsed.host_str().unwrap_or_default();
            let reqwest = crate::token::origin(parsed.scheme(), host, parsed.port());
            let tower = Endpoint::new(http::Method::GET, &url.parse().unwrap()).origin;
            assert_eq!(reqwest, tower, "{url}");
        }
        let tower = Endpoint::new(
            http::Method::GET,
            &"https://core.wearepatchworks.com/".parse().unwrap(),
        );
        assert_eq!(tower.origin, "https://core.wearepatchworks.com:443");
    }
}
