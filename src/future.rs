//! The response future: sends the request with the token and recovers once from a 401.
//!
//! The warm path (a fresh token, a 2xx answer) is a hand-written state machine that allocates
//! nothing for the token. Everything rarer (waiting for a login, recovering from a 401) is a
//! boxed `async` block: one allocation, off the hot path.

use crate::{
    cache::{Cache, Unauthorized},
    error::{Error, Kind},
    service::{HttpService, RequestBody, ResponseBody},
};
use bytes::{Buf, Bytes, BytesMut};
use http::{
    header::AUTHORIZATION, Extensions, HeaderMap, HeaderValue, Method, Request, Response,
    StatusCode, Uri, Version,
};
use http_body::Body;
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tower::{BoxError, ServiceExt};
use tower_service::Service;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// Response future for [`Auth`](crate::Auth).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // Not ours to touch: the inner future as it is.
        Passthrough { #[pin] future: S::Future },
        // Reading a small request body so that it can be replayed.
        Buffering {
            #[pin] body: ReqBody,
            buffer: BodyBuffer,
            pending: Option<Pending<S>>,
        },
        // Sent with the token; a 401 moves on to `Slow`.
        Sent {
            #[pin] future: S::Future,
            ctx: Option<Ctx<S>>,
            replay: Option<Replay>,
        },
        // Waiting for a login, or recovering from a 401.
        Slow { future: BoxFuture<Result<S::Response, BoxError>> },
        // The layer cannot be used (its configuration is refused).
        Failed { error: Option<Error> },
    }
}

/// What a sent request needs to recover from a 401: a service to log in and replay with, the
/// cache, and which token it carried.
struct Ctx<S> {
    inner: S,
    cache: Arc<Cache>,
    generation: u64,
}

/// A request waiting for its body to be buffered.
struct Pending<S> {
    ctx: Ctx<S>,
    parts: http::request::Parts,
    header: HeaderValue,
}

/// Everything of a request but its token, to send it again.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

impl Replay {
    /// Copies a request that does not carry the token yet.
    fn copy<B>(request: &Request<B>, body: Bytes) -> Replay {
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            body,
        }
    }

    fn into_request<B: From<Bytes>>(self, header: HeaderValue) -> Request<B> {
        let mut request = Request::new(B::from(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request.headers_mut().insert(AUTHORIZATION, header);
        request
    }
}

/// How a request's body can be kept for a replay.
enum Keep {
    /// No body: a replay sends an empty one.
    Empty,
    /// A known size within the limit: read it first.
    Buffer,
    /// Streaming or too large: sent as it is, not replayable.
    Nothing,
}

impl Keep {
    fn for_body<B: Body>(body: &B, limit: usize) -> Keep {
        if body.is_end_stream() {
            Keep::Empty
        } else if body
            .size_hint()
            .exact()
            .is_some_and(|len| len <= limit as u64)
        {
            Keep::Buffer
        } else {
            Keep::Nothing
        }
    }
}

// The constructors are crate-private; the crate-private bounds say what they need in one word.
#[allow(private_bounds)]
impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody>
where
    S: HttpService<ReqBody, ResBody> + Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: RequestBody,
    ResBody: ResponseBody,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self::new(State::Passthrough { future })
    }

    pub(crate) fn failed(error: Error) -> Self {
        Self::new(State::Failed { error: Some(error) })
    }

    /// A request that has a token: `inner` is ready.
    pub(crate) fn warm(
        inner: S,
        cache: Arc<Cache>,
        request: Request<ReqBody>,
        header: HeaderValue,
        generation: u64,
    ) -> Self {
        let ctx = Ctx {
            inner,
            cache,
            generation,
        };
        Self::new(
            match Keep::for_body(request.body(), ctx.cache.config.replay_body_limit) {
                Keep::Empty => {
                    let replay = Replay::copy(&request, Bytes::new());
                    send(ctx, request, header, Some(replay))
                }
                Keep::Buffer => {
                    let (parts, body) = request.into_parts();
                    State::Buffering {
                        body,
                        buffer: BodyBuffer::Empty,
                        pending: Some(Pending { ctx, parts, header }),
                    }
                }
                Keep::Nothing => send(ctx, request, header, None),
            },
        )
    }

    /// A request that waits for a login first: `inner` is a clone, not ready.
    pub(crate) fn cold(inner: S, cache: Arc<Cache>, request: Request<ReqBody>) -> Self {
        Self::new(State::Slow {
            future: Box::pin(cold(inner, cache, request)),
        })
    }

    fn new(state: State<S, ReqBody>) -> Self {
        ResponseFuture { state }
    }
}

/// Attaches the token and calls the (ready) inner service.
fn send<S, ReqBody>(
    mut ctx: Ctx<S>,
    mut request: Request<ReqBody>,
    header: HeaderValue,
    replay: Option<Replay>,
) -> State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    request.headers_mut().insert(AUTHORIZATION, header);
    State::Sent {
        future: ctx.inner.call(request),
        ctx: Some(ctx),
        replay,
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Passthrough { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Buffering {
                    body,
                    buffer,
                    pending,
                } => {
                    let limit = match pending {
                        Some(pending) => pending.ctx.cache.config.replay_body_limit,
                        None => return Poll::Ready(Err(polled_after_completion())),
                    };
                    let bytes = ready!(buffer.poll_fill(body, limit, cx))?;
                    let Some(Pending { ctx, parts, header }) = pending.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let request = Request::from_parts(parts, ReqBody::from(bytes.clone()));
                    let replay = Replay::copy(&request, bytes);
                    this.state.set(send(ctx, request, header, Some(replay)));
                }
                StateProj::Sent {
                    future,
                    ctx,
                    replay,
                } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(ctx) = ctx.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = Box::pin(recover(ctx, replay.take(), response));
                    this.state.set(State::Slow { future });
                }
                StateProj::Slow { future } => return future.as_mut().poll(cx),
                StateProj::Failed { error } => {
                    let error = error.take().unwrap_or_else(polled_after_completion_error);
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

fn polled_after_completion_error() -> Error {
    Error::config("ResponseFuture polled after it completed")
}

fn polled_after_completion() -> BoxError {
    polled_after_completion_error().into()
}

/// A request without a usable token: wait for the login, then send it like a warm one.
async fn cold<S, ReqBody, ResBody>(
    mut inner: S,
    cache: Arc<Cache>,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: HttpService<ReqBody, ResBody> + Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: RequestBody,
    ResBody: ResponseBody,
{
    let token = cache.token(&inner).await?;
    inner.ready().await.map_err(Into::into)?;
    let header = token.header.clone();
    ResponseFuture::warm(inner, cache, request, header, token.generation).await
}

/// A 401 to a request that carried the token: renew the token (once for every request that
/// carried the same one) and replay the request once, if it can be replayed.
async fn recover<S, ReqBody, ResBody>(
    ctx: Ctx<S>,
    replay: Option<Replay>,
    unauthorized: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: HttpService<ReqBody, ResBody>,
    ReqBody: From<Bytes> + Send + 'static,
    ResBody: ResponseBody,
{
    let Ctx {
        mut inner,
        cache,
        generation,
    } = ctx;
    let Some(replay) = replay else {
        // The body is gone: renew the token for the next request, and hand this 401 back.
        if matches!(
            cache.unauthorized(generation, &inner),
            Ok(Unauthorized::Renew)
        ) {
            let _ = cache.token(&inner).await;
        }
        return Ok(unauthorized);
    };
    if cache.unauthorized(generation, &inner)? == Unauthorized::Keep {
        return Ok(unauthorized);
    }
    drop(unauthorized);
    let token = cache.token(&inner).await?;
    tracing::debug!(
        target: "patchworks_auth",
        generation = token.generation,
        "replaying the request that got 401 with the new token"
    );
    let request = replay.into_request(token.header.clone());
    let response = inner
        .ready()
        .await
        .map_err(Into::into)?
        .call(request)
        .await
        .map_err(Into::into)?;
    Ok(response)
}

/// A request body being read into memory.
enum BodyBuffer {
    Empty,
    /// One chunk, kept without a copy (the common case: a `Full` body).
    One(Bytes),
    Many(BytesMut),
}

impl BodyBuffer {
    /// Reads `body` to its end. Trailers are dropped: the body is rebuilt with `From<Bytes>`.
    fn poll_fill<B>(
        &mut self,
        mut body: Pin<&mut B>,
        limit: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, BoxError>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        while !body.is_end_stream() {
            let Some(frame) = ready!(body.as_mut().poll_frame(cx)) else {
                break;
            };
            let Ok(mut data) = frame.map_err(Into::into)?.into_data() else {
                continue;
            };
            let chunk = data.copy_to_bytes(data.remaining());
            *self = match std::mem::replace(self, BodyBuffer::Empty) {
                BodyBuffer::Empty => BodyBuffer::One(chunk),
                BodyBuffer::One(first) => {
                    let mut all = BytesMut::with_capacity(first.len() + chunk.len());
                    all.extend_from_slice(&first);
                    all.extend_from_slice(&chunk);
                    BodyBuffer::Many(all)
                }
                BodyBuffer::Many(mut all) => {
                    all.extend_from_slice(&chunk);
                    BodyBuffer::Many(all)
                }
            };
            if self.len() > limit {
                return Poll::Ready(Err(Error::new(Kind::RequestBody).into()));
            }
        }
        Poll::Ready(Ok(match std::mem::replace(self, BodyBuffer::Empty) {
            BodyBuffer::Empty => Bytes::new(),
            BodyBuffer::One(bytes) => bytes,
            BodyBuffer::Many(all) => all.freeze(),
        }))
    }

    fn len(&self) -> usize {
        match self {
            BodyBuffer::Empty => 0,
            BodyBuffer::One(bytes) => bytes.len(),
            BodyBuffer::Many(all) => all.len(),
        }
    }
}
