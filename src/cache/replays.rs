//! The 401 path both adapters call: the core's judgement carried out, the request replayed
//! (once more if the token it got, from the store, was refused too), and the check that
//! settles a bare 401; every send under the API budget.

use super::*;
use http::StatusCode;

/// How an adapter sends a request: the tower layer through a clone of its inner service, the
/// reqwest middleware through the rest of its chain (or its client, for a check).
pub(crate) trait Transport: Send {
    type Request: Send;
    type Response: Send;
    type Error: Send;

    /// The layer's own failure, as the adapter returns it.
    fn error(error: Error) -> Self::Error;

    /// The request's headers, for the token.
    fn headers(request: &mut Self::Request) -> &mut HeaderMap;

    /// The request's method, for the check (always a `GET`).
    fn method(request: &mut Self::Request) -> &mut http::Method;

    /// The answer's status and headers.
    fn answer(response: &Self::Response) -> (StatusCode, &HeaderMap);

    /// Resolves when a request may be sent (the inner service is ready).
    fn ready(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Sends a request, once [`Transport::ready`] resolved.
    fn call(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send;
}

impl Cache {
    /// Sends `request` by `transport` under the API budget: the unit is taken before the
    /// transport is ready, spent when the request leaves, and given back if it never does.
    pub(crate) async fn send<T: Transport>(
        &self,
        transport: &mut T,
        request: T::Request,
    ) -> Result<T::Response, T::Error> {
        let spent = self.spend().await.map_err(T::error)?;
        self.send_spent(transport, request, spent).await
    }

    /// [`Cache::send`] with the unit `spent` already taken.
    pub(crate) async fn send_spent<T: Transport>(
        &self,
        transport: &mut T,
        request: T::Request,
        mut spent: crate::budget::Spent,
    ) -> Result<T::Response, T::Error> {
        transport.ready().await?;
        spent.sending();
        let response = transport.call(request).await;
        spent.answered();
        response
    }

    /// A 401 (`refused`) to a request to `endpoint` that carried token `generation`: the core
    /// decides ([`Cache::unauthorized`]); the request (a copy from `replay`) is sent again with
    /// the new token, or the 401 returned as it is. A replay refused with a token taken from the
    /// store is judged like any refused token, and replayed once more at most.
    #[allow(clippy::too_many_arguments)] // one call in each adapter; a struct would be read once
    pub(crate) async fn recover<T: Transport>(
        self: &Arc<Self>,
        transport: &mut T,
        (mut generation, endpoint): (u64, &Endpoint),
        mut refused: T::Response,
        replay: impl Fn() -> Option<T::Request> + Send,
        mut replayable: bool,
        login: impl Fn() -> LoginFn + Send,
        check: impl Fn() -> CheckFn + Send,
    ) -> Result<T::Response, T::Error> {
        // The caller's 401, then at most one to a token the store gave.
        for _ in 0..2 {
            let (_, headers) = T::answer(&refused);
            let decision =
                self.unauthorized(generation, endpoint, headers, replayable, login(), check());
            let (Some(token), Some(mut request)) = (decision.await.map_err(T::error)?, replay())
            else {
                return Ok(refused);
            };
            drop(refused);
            token.authorize_again(T::headers(&mut request), Again::Replay);
            let response = self.send(transport, request).await?;
            if !self.replayed(token.generation, endpoint.clone(), T::answer(&response)) {
                return Ok(response);
            }
            (generation, replayable, refused) = (token.generation, true, response);
        }
        Ok(refused)
    }

    /// The check of a token that settles a bare 401 ([`CheckFn`]): the request `probe` makes
    /// for the endpoint's path, made a `GET` here (whatever the adapter built), with the token,
    /// sent by `transport` under the API budget; its 429 pauses the budget, as any answer's does.
    pub(crate) fn check_fn<T: Transport + 'static>(
        self: &Arc<Self>,
        mut transport: T,
        probe: impl FnOnce(&str) -> Option<T::Request> + Send + 'static,
    ) -> CheckFn {
        let cache = self.clone();
        Box::new(move |endpoint: Endpoint, token: Arc<Token>| {
            Box::pin(async move {
                let Some(mut request) = probe(&endpoint.path) else {
                    return Checked::CannotTell;
                };
                *T::method(&mut request) = http::Method::GET;
                token.authorize_again(T::headers(&mut request), Again::Check);
                let Ok(response) = cache.send(&mut transport, request).await else {
                    return Checked::CannotTell;
                };
                let (status, headers) = T::answer(&response);
                if crate::budget::is_too_many(status) {
                    cache.throttled(headers);
                }
                Checked::read(status)
            })
        })
    }
}
