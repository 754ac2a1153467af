//! A 401 to a request that carried the token, through the driver's one 401 path
//! ([`Cache::recover`]), with a clone of the inner service as its [`Transport`].

use super::*;
use crate::cache::Transport;
use std::marker::PhantomData;

/// A tower service as the driver's [`Transport`].
pub(crate) struct Sender<S, ReqBody>(S, PhantomData<fn(ReqBody)>);

impl<S, ReqBody> Sender<S, ReqBody> {
    pub(crate) fn new(service: S) -> Self {
        Sender(service, PhantomData)
    }
}

impl<S, ReqBody> Transport for Sender<S, ReqBody>
where
    S: HttpService<ReqBody>,
    ReqBody: RequestBody,
{
    type Request = Request<ReqBody>;
    type Response = Response<S::ResBody>;
    type Error = BoxError;

    fn error(error: Error) -> BoxError {
        error.into()
    }

    fn headers(request: &mut Self::Request) -> &mut HeaderMap {
        request.headers_mut()
    }

    fn method(request: &mut Self::Request) -> &mut http::Method {
        request.method_mut()
    }

    fn answer(response: &Self::Response) -> (StatusCode, &HeaderMap) {
        (response.status(), response.headers())
    }

    async fn ready(&mut self) -> Result<(), BoxError> {
        ServiceExt::<Request<ReqBody>>::ready(&mut self.0)
            .await
            .map_err(Into::into)?;
        Ok(())
    }

    fn call(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, BoxError>> + Send {
        let future = self.0.call(request);
        async move { future.await.map_err(Into::into) }
    }
}

/// A 401 to a request that carried the token: the core decides, and the request is replayed
/// with the new token or its 401 returned as it is ([`Cache::recover`]). Checks of the token
/// are `GET`s to a path on the refused request's origin.
pub(super) async fn recover<S, ReqBody, ResBody>(
    ctx: Ctx<S>,
    replay: Replay,
    unauthorized: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: HttpService<ReqBody, ResBody = ResBody>,
    ReqBody: RequestBody,
    ResBody: ResponseBody,
{
    let Ctx {
        replayer,
        generation,
        ..
    } = ctx;
    let Some(inner) = replayer.service() else {
        return Ok(unauthorized);
    };
    let cache = &replayer.cache;
    let (endpoint, origin) = (replay.endpoint(), replay.uri());
    let (for_login, for_check) = (inner.clone(), inner.clone());
    let login = move || login_fn(&cache.login, &for_login);
    let check = move || cache.check_fn(Sender::new(for_check.clone()), probe(origin.clone()));
    let replays = || replay.request::<ReqBody>();
    let mut sender = Sender::new(inner);
    let kept = replay.body_kept;
    let refused = (generation, &endpoint);
    (cache.recover(
        &mut sender,
        refused,
        unauthorized,
        replays,
        kept,
        login,
        check,
    ))
    .await
}

/// The check's request: a `GET` to `path` on `origin`, without a body.
fn probe<ReqBody: From<Bytes>>(
    origin: Option<Uri>,
) -> impl FnOnce(&str) -> Option<Request<ReqBody>> + Send + 'static {
    move |path| {
        let mut parts = origin?.into_parts();
        parts.path_and_query = Some(path.parse().ok()?);
        let uri = Uri::from_parts(parts).ok()?;
        Request::get(uri).body(ReqBody::from(Bytes::new())).ok()
    }
}
