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
    bounds::BoxFuture,
    cache::{Again, Cache, Check, CheckFn, Token},
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
        let login = login_fn(&cache.config, client.clone());
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

    /// Follows what the layer knows of its token: the receiver is marked changed after every
    /// login outcome and every token discarded, so a service can await its first token at
    /// start-up, alert when a background renewal fails (`last_error`), or log each renewal,
    /// without polling [`state`](Self::state).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<crate::TokenState> {
        self.cache.watch()
    }

    /// A token that may be sent now: the current one (starting its renewal if it is due), or
    /// the outcome of a login; and what this request waits for after its answer.
    async fn token(&self) -> Result<(Arc<Token>, Option<BoxFuture<()>>), Error> {
        if let Some(token) = self.cache.current().load_full() {
            match self.cache.check(&token, || self.login.clone()) {
                Check::Send => return Ok((token, None)),
                Check::Join(renewal) => return Ok((token, Some(renewal))),
                Check::Wait => {}
            }
        }
        self.cache.token(self.login.clone()).await
    }

    async fn send(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let scope = match &self.cache.config.scope {
            Ok(scope) => scope,
            Err(error) => return Err(middleware_error(error.clone())),
        };
        let in_scope = request
            .url()
            .as_str()
            .parse::<Uri>()
            .is_ok_and(|uri| scope.contains(&uri));
        if request.headers().contains_key(AUTHORIZATION) || !in_scope {
            // The caller's own credentials, or not a Patchworks origin: not ours to touch.
            return next.run(request, extensions).await;
        }
        // The token first (a login if one is needed), then the budget's unit, at the moment of
        // sending: a request waiting for a login holds no unit.
        let (token, renewal) = self.token().await.map_err(middleware_error)?;
        let spent = self.cache.spend().await.map_err(middleware_error)?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, token.header.clone());
        let response = self.sent(token, request, extensions, next, spent).await;
        if let Some(renewal) = renewal {
            renewal.await;
        }
        response
    }

    /// Sends a request that carries `token`; a 401 goes to the core, as for the tower layer.
    async fn sent(
        &self,
        token: Arc<Token>,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
        spent: crate::budget::Spent,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let replay = request.try_clone();
        let url = request.url().clone();
        let endpoint = Endpoint {
            method: request.method().clone(),
            path: request.url().path().to_owned(),
        };
        let extensions_copy = extensions.clone();
        let mut spent = spent;
        spent.sending();
        let response = next.clone().run(request, extensions).await;
        spent.answered();
        let response = response?;
        if response.status() != StatusCode::UNAUTHORIZED {
            let answer = (response.status(), response.headers());
            self.cache.answered(token.generation, answer, || endpoint);
            return Ok(response);
        }
        let decision = self.cache.unauthorized(
            token.generation,
            &endpoint,
            response.headers(),
            replay.is_some(),
            self.login.clone(),
            self.check_fn(&url),
        );
        let (Some(mut token), Some(mut replay)) =
            (decision.await.map_err(middleware_error)?, replay)
        else {
            return Ok(response);
        };
        drop(response);
        for again in [true, false] {
            let copy = replay.try_clone();
            let mut spent = self.cache.spend().await.map_err(middleware_error)?;
            token.authorize_again(replay.headers_mut(), Again::Replay);
            spent.sending();
            let response = next.clone().run(replay, &mut extensions_copy.clone()).await;
            spent.answered();
            let response = response?;
            let answer = (response.status(), response.headers());
            if !self
                .cache
                .replayed(token.generation, endpoint.clone(), answer)
                || !again
            {
                return Ok(response);
            }
            // Refused with a token from the store: judged like any refused token.
            let (headers, login) = (response.headers(), self.login.clone());
            let check = self.check_fn(&url);
            let decision =
                (self.cache).unauthorized(token.generation, &endpoint, headers, true, login, check);
            match (decision.await.map_err(middleware_error)?, copy) {
                (Some(next_token), Some(next_replay)) => {
                    (token, replay) = (next_token, next_replay)
                }
                _ => return Ok(response),
            }
        }
        unreachable!("the second replay returns")
    }

    /// The check of a token that settles a bare 401 ([`CheckFn`]): a `GET` to the endpoint's
    /// path on `refused`'s origin, with this middleware's client, under the API budget.
    fn check_fn(&self, refused: &reqwest::Url) -> CheckFn {
        let (cache, client, mut url) = (self.cache.clone(), self.client.clone(), refused.clone());
        Box::new(move |probe: Endpoint, token: Arc<Token>| {
            Box::pin(async move {
                url.set_path(&probe.path);
                url.set_query(None);
                let mut request = reqwest::Request::new(http::Method::GET, url);
                token.authorize_again(request.headers_mut(), Again::Check);
                let mut spent = cache.spend().await.ok()?;
                spent.sending();
                let response = client.execute(request).await;
                spent.answered();
                Some(response.ok()?.status() == StatusCode::UNAUTHORIZED)
            })
        })
    }
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

fn middleware_error(error: Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(error)
}

/// Logs in once through `client`.
fn login_fn(config: &crate::config::Config, client: reqwest::Client) -> LoginFn {
    login::login_through(config, move || {
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
