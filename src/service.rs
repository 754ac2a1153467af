//! The service: decides per request whether and with what token it is sent.

use crate::{
    bounds::BoxFuture,
    bounds::{HttpService, RequestBody, ResponseBody},
    cache::{Cache, Check, Route},
    future::{Ready, Replayer, ResponseFuture},
    login,
    token::TokenState,
};
use http::{Request, Response};
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};
use tower::BoxError;
use tower_service::Service;

/// Middleware that logs in to Patchworks and attaches the bearer token to requests for the
/// Patchworks API.
///
/// Made by [`AuthLayer`](crate::AuthLayer); see there and the [crate documentation](crate)
/// for its behaviour. Clones share one token cache.
///
/// # Request bodies
///
/// The request body must be one the layer can build from bytes (`From<Bytes>`), for its login
/// and for a replay: `Full<Bytes>`, axum's `Body`, or [`body::Body`](crate::body::Body), which
/// takes any other (`Empty<Bytes>`, `String`, `BoxBody`, `UnsyncBoxBody`, a forwarded
/// `hyper::body::Incoming`). A body of known size up to the
/// [replay limit](crate::AuthLayer::replay_body_limit) is kept for a replay after a 401; a
/// streamed one is sent once, and its 401 returned once the token is renewed.
///
/// A request with a fresh cached token costs a pointer comparison with the cache, one atomic
/// load of the token's state, the token header's clone (as a static header would), and a copy of
/// the request's method, URI and headers kept until the response arrives, so that the request
/// can be replayed after a 401.
///
/// The inner service is not cloned per request: a replay after a 401 goes through a clone of it
/// that the first request keeps for all clones. Clones share the cache.
pub struct Auth<S> {
    inner: S,
    /// What the clones of this service share for their requests' 401s: the cache, and a clone
    /// of the inner service.
    shared: Arc<Replayer<S>>,
    /// Whether this service's requests take a unit of the API budget: the layer has one. A
    /// field, so that a layer without a budget pays one test of it on the request path.
    budgeted: bool,
}

impl<S> Auth<S> {
    pub(crate) fn new(inner: S, cache: Arc<Cache>) -> Self {
        Auth {
            budgeted: cache.gate.is_some(),
            shared: Replayer::new(cache),
            inner,
        }
    }

    /// Gets a reference to the underlying service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gets a mutable reference to the underlying service.
    ///
    /// Replays after a 401 then go through a clone of the service as it is at this service's
    /// next request, not of the one the clones share.
    pub fn get_mut(&mut self) -> &mut S {
        // The copy kept for replays may no longer be what the caller makes of the service.
        self.shared = Replayer::new(self.shared.cache.clone());
        &mut self.inner
    }

    /// Consumes `self`, returning the underlying service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// What the layer knows of its token, without the token.
    ///
    /// ```
    /// # use patchworks_auth::{test_util::FakePatchworks, AuthLayer};
    /// # use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// # let patchworks = FakePatchworks::start().await?;
    /// let client = AuthLayer::new(patchworks.credentials())
    ///     .login_url(patchworks.login_url())
    ///     .layer(patchworks.client());
    /// assert!(!client.state().usable); // lazy: no login yet
    /// client.login().await?;
    /// let state = client.state();
    /// assert!(state.usable && state.logins == 1);
    /// assert!(state.expires_at > state.obtained_at);
    /// # Ok(())
    /// # }
    /// ```
    pub fn state(&self) -> TokenState {
        self.shared.cache.state()
    }

    /// Follows what the layer knows of its token: see [`AuthLayer::watch`](crate::AuthLayer::watch).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<TokenState> {
        self.shared.cache.watch()
    }

    /// What the API budget counted in this process: see
    /// [`AuthLayer::budget_state`](crate::AuthLayer::budget_state).
    pub fn budget_state(&self) -> crate::budget::BudgetState {
        self.shared.cache.budget_state()
    }
}

impl<S> Auth<S> {
    /// Whether requests to `uri` get the token.
    #[cfg(feature = "rustls")]
    pub(crate) fn trusts(&self, uri: &http::Uri) -> bool {
        let scope = self.shared.cache.judged.as_ref();
        scope.is_ok_and(|scope| scope.contains(uri))
    }

    /// Makes sure a token is cached: logs in now unless a usable token is, and waits for that
    /// login. Requests do this by themselves; call it at start-up to refuse to start with bad
    /// credentials or an unreachable login endpoint.
    ///
    /// # Errors
    ///
    /// The login's [`Error`](crate::Error): rejected credentials, a timeout, a broken answer.
    ///
    /// ```
    /// # use patchworks_auth::{test_util::FakePatchworks, AuthLayer, Credentials};
    /// # use tower::Layer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let patchworks = FakePatchworks::start().await.unwrap();
    /// let client = AuthLayer::new(Credentials::new("ops@example.com", "wrong"))
    ///     .login_url(patchworks.login_url())
    ///     .layer(patchworks.client());
    /// let error = client.login().await.unwrap_err();
    /// assert!(error.is_rejected());
    /// # }
    /// ```
    pub async fn login<ReqBody>(&self) -> Result<(), crate::Error>
    where
        S: HttpService<ReqBody>,
        ReqBody: RequestBody,
    {
        if let Err(error) = &self.shared.cache.judged {
            return Err(error.clone());
        }
        let login = login::login_fn(&self.shared.cache.login, &self.inner);
        let (_, after) = self.shared.cache.token(login).await?;
        if let Some(saved) = after {
            saved.await;
        }
        Ok(())
    }
}

impl<S: Clone> Clone for Auth<S> {
    fn clone(&self) -> Self {
        Auth {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            budgeted: self.budgeted,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .field("cache", &self.shared.cache)
            .finish()
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for Auth<S>
where
    S: HttpService<ReqBody>,
    ReqBody: RequestBody,
{
    type Response = Response<S::ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self
            .shared
            .cache
            .route(request.headers(), Some(request.uri()))
        {
            Route::Authorize => {}
            Route::Untouched => return ResponseFuture::passthrough(self.inner.call(request)),
            Route::Refused(error) => return ResponseFuture::failed(error),
        }
        // Under an API budget the token comes first, then the unit, at the moment of sending:
        // a request waiting for a login holds no unit (the login's own is never behind it),
        // and what is counted is what is sent.
        let (cache, inner) = (&self.shared.cache, &self.inner);
        let current = cache.current();
        let token = match cache.check(current.as_ref(), || login::login_fn(&cache.login, inner)) {
            Check::Send(token) => token,
            Check::Wait => return self.slow(request, None),
            Check::Join(_, renewal) => return self.slow(request, Some(renewal)),
        };
        // Under a budget, a unit now or the slow path's wait for one; held by its guard, which
        // gives it back if the request is dropped before it is sent.
        let spent = if self.budgeted {
            match self.shared.cache.take_now() {
                Some(spent) => spent,
                None => return self.slow(request, None),
            }
        } else {
            crate::budget::Spent::none()
        };
        self.shared.ready(&self.inner);
        let token = (token.header.clone(), token.generation);
        drop(current);
        let (ready, replayer) = (Ready::Borrowed(&mut self.inner), self.shared.clone());
        ResponseFuture::warm(ready, replayer, request, token, spent)
    }
}

impl<S: Clone> Auth<S> {
    /// A request that must wait for its token, its turn in the budget, or the renewal it took
    /// up (`renewal`): its token (a login if one is needed), then its unit (held by its guard
    /// until the request is handed to the service below), then a clone driven ready sends it
    /// as the warm path does, and the request returns once the renewal and the saving of its
    /// login's token are over too.
    ///
    /// `poll_ready` may have reserved capacity in `self.inner` (a `ConcurrencyLimit` permit, a
    /// `Buffer` slot) that the login itself needs: it is let go here, not held across the wait.
    #[cold]
    #[inline(never)]
    fn slow<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        renewal: Option<BoxFuture<()>>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: HttpService<ReqBody, ResBody = ResBody>,
        ReqBody: RequestBody,
        ResBody: ResponseBody,
    {
        let unreserved = self.inner.clone();
        drop(std::mem::replace(&mut self.inner, unreserved));
        self.shared.ready(&self.inner);
        let (mut inner, replayer) = (self.inner.clone(), self.shared.clone());
        let login = login::login_fn(&replayer.cache.login, &inner);
        ResponseFuture::slow(Box::pin(async move {
            let cache = replayer.cache.clone();
            let (_, first) = cache.acquire(login.clone()).await?;
            let spent = cache.spend().await?;
            // The token as it is when the unit came: the wait may have made it due (this
            // request then starts its renewal) or replaced it.
            let (token, after) = cache.acquire(login).await?;
            tower::ServiceExt::<Request<ReqBody>>::ready(&mut inner)
                .await
                .map_err(Into::into)?;
            let token = (token.header.clone(), token.generation);
            let ready = Ready::Owned(inner);
            let response = ResponseFuture::warm(ready, replayer, request, token, spent).await;
            for after in [renewal, first, after].into_iter().flatten() {
                after.await;
            }
            response
        }))
    }
}
