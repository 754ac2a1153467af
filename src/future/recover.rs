//! A 401 to a request that carried the token: the core's decision carried out, the request
//! replayed, or the check that settles a bare 401 sent.

use super::*;

/// The check of a token that settles a bare 401 ([`CheckFn`]): a `GET` to the endpoint's path
/// on `refused`'s origin, through a clone of the inner service, under the API budget.
pub(super) fn check_fn<S, ReqBody>(
    replayer: Arc<Replayer<S>>,
    mut inner: S,
    refused: Option<Uri>,
) -> CheckFn
where
    S: HttpService<ReqBody>,
    ReqBody: From<Bytes> + Send + 'static,
{
    Box::new(move |probe: Endpoint, token: Arc<Token>| {
        Box::pin(async move {
            let mut parts = refused?.into_parts();
            parts.path_and_query = Some(probe.path.parse().ok()?);
            let uri = Uri::from_parts(parts).ok()?;
            let mut request = Request::get(uri).body(ReqBody::from(Bytes::new())).ok()?;
            token.authorize_again(request.headers_mut(), Again::Check);
            let mut spent = replayer.cache.spend().await.ok()?;
            let ready = inner.ready().await.ok()?;
            spent.sending();
            let response = ready.call(request).await;
            spent.answered();
            Some(response.ok()?.status() == StatusCode::UNAUTHORIZED)
        })
    })
}

/// A 401 to a request that carried the token: the core decides ([`Cache::unauthorized`]);
/// the request is replayed once with the new token, or its 401 returned as it is.
pub(super) async fn recover<S, ReqBody, ResBody>(
    ctx: Ctx<S>,
    replay: Replay,
    unauthorized: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: HttpService<ReqBody, ResBody = ResBody>,
    ReqBody: From<Bytes> + Send + 'static,
    ResBody: ResponseBody,
{
    let Ctx {
        replayer,
        generation,
    } = ctx;
    let Some(mut inner) = replayer.service() else {
        return Ok(unauthorized);
    };
    let cache = &replayer.cache;
    let endpoint = replay.endpoint();
    let login = login_fn(&cache.config, &inner);
    let headers = unauthorized.headers();
    let check = check_fn(replayer.clone(), inner.clone(), replay.uri.uri());
    let decision = cache.unauthorized(
        generation,
        &endpoint,
        headers,
        replay.body_kept,
        login,
        check,
    );
    let Some(mut token) = decision.await? else {
        return Ok(unauthorized);
    };
    let Some(mut request) = replay.request::<ReqBody>() else {
        // Not seen for a URI that `http` parsed, which prints as it parses; but if it happens,
        // the caller gets the answer it would have had without the layer.
        return Ok(unauthorized);
    };
    drop(unauthorized);
    for again in [true, false] {
        let mut spent = cache.spend().await?;
        token.authorize_again(request.headers_mut(), Again::Replay);
        let ready = inner.ready().await.map_err(Into::into)?;
        spent.sending();
        let response = ready.call(request).await;
        spent.answered();
        let response = response.map_err(Into::into)?;
        let answer = (response.status(), response.headers());
        if !cache.replayed(token.generation, endpoint.clone(), answer) || !again {
            return Ok(response);
        }
        // Refused with a token from the store: judged like any refused token.
        let (headers, login) = (response.headers(), login_fn(&cache.config, &inner));
        let check = check_fn(replayer.clone(), inner.clone(), replay.uri.uri());
        let decision = cache.unauthorized(token.generation, &endpoint, headers, true, login, check);
        match (decision.await?, replay.request::<ReqBody>()) {
            (Some(next), Some(next_request)) => (token, request) = (next, next_request),
            _ => return Ok(response),
        }
    }
    unreachable!("the second replay returns")
}
