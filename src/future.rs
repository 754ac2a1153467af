//! The response future: sends the request with the token and recovers once from a 401.
//!
//! The warm path (a fresh token, a 2xx answer) is a hand-written state machine that allocates
//! nothing for the token. Everything rarer (waiting for a login, recovering from a 401) is
//! boxed, off the hot path. What a state that waits keeps (a login's request, a body being
//! read) is boxed too, so that the future every request moves is the inner future, the replay
//! copy and a pointer: 176 bytes over hyper-util's client.

use crate::{
    bounds::BoxFuture,
    bounds::{HttpService, RequestBody, ResponseBody},
    cache::{After, Again, Cache, CheckFn, Token},
    error::{Error, Kind},
    login::login_fn,
    token::Endpoint,
};
use arrayvec::ArrayString;
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
            pending: Option<Box<Pending<S>>>,
        },
        // Sent with the token; a 401 moves on to `Slow`.
        Sent {
            #[pin] future: S::Future,
            ctx: Option<Ctx<S>>,
            replay: Option<Replay>,
        },
        // No usable token: waiting for the login.
        Waiting {
            login: BoxFuture<Result<(Arc<Token>, After), Error>>,
            cold: Option<Box<Cold<S, ReqBody>>>,
        },
        // The token came: driving the inner service ready again.
        Readying { cold: Option<(Box<Cold<S, ReqBody>>, Arc<Token>, After)> },
        // Recovering from a 401.
        Slow { future: BoxFuture<Result<S::Response, BoxError>> },
        // The layer cannot be used (its configuration is refused).
        Failed { error: Option<Error> },
        // The response (or error) was returned.
        Done,
    }
}

/// The one message of a `ResponseFuture` polled again after it returned `Ready`.
const POLLED_AFTER_COMPLETION: &str = "ResponseFuture polled after completion";

/// What a sent request needs to recover from a 401: a service to log in and replay with, the
/// cache, and which token it carried.
struct Ctx<S> {
    replayer: Arc<Replayer<S>>,
    generation: u64,
}

/// What a request in flight keeps for a 401: the cache, and a clone of the inner service to
/// log in and replay with. One reference count per request, instead of a clone of the inner
/// service (for hyper-util's client, several shared reference counts) and of the cache's `Arc`.
pub(crate) struct Replayer<S> {
    pub(crate) cache: Arc<Cache>,
    /// Only for a replay (rare); the `Mutex` keeps `Replayer` `Sync` for any `Send` service.
    /// Set by the first request: the layer wraps services that are not (yet known to be)
    /// `Clone`.
    inner: std::sync::OnceLock<std::sync::Mutex<S>>,
}

impl<S> Replayer<S> {
    /// A clone of its service, to log in and replay with; `None` only if it was never given
    /// one, which [`Replayer::ready`] does before any request is sent.
    fn service(&self) -> Option<S>
    where
        S: Clone,
    {
        let inner = self.inner.get()?;
        let inner = inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(inner.clone())
    }

    /// A replayer whose service comes with the first request ([`Replayer::ready`]).
    pub(crate) fn new(cache: Arc<Cache>) -> Arc<Self> {
        Arc::new(Replayer {
            cache,
            inner: std::sync::OnceLock::new(),
        })
    }

    /// A replayer with its service.
    pub(crate) fn with(cache: Arc<Cache>, inner: S) -> Arc<Self> {
        Arc::new(Replayer {
            cache,
            inner: std::sync::OnceLock::from(std::sync::Mutex::new(inner)),
        })
    }

    /// Gives the replayer a clone of `inner` unless it has one: called before a request that
    /// it may have to replay is sent.
    #[inline]
    pub(crate) fn ready(&self, inner: &S)
    where
        S: Clone,
    {
        self.inner
            .get_or_init(|| std::sync::Mutex::new(inner.clone()));
    }
}

/// A ready service for a warm request, as the service or a login wait hands it over.
pub(crate) enum Ready<'a, S> {
    /// A service of the request's own (a clone, driven ready after a login wait).
    Owned(S),
    /// The `Auth`'s ready inner service.
    Borrowed(&'a mut S),
}

/// A request waiting for a token: `inner` is a clone, not ready.
struct Cold<S, ReqBody> {
    inner: S,
    replayer: Arc<Replayer<S>>,
    request: Request<ReqBody>,
}

/// A request waiting for its body to be buffered: `sender` is ready. Boxed in the future.
struct Pending<S> {
    sender: S,
    ctx: Ctx<S>,
    parts: http::request::Parts,
    header: HeaderValue,
    limit: usize,
}

/// Everything of a request but its token, to send it again, and to tell which endpoint a 401
/// came from.
///
/// Kept small for the common request (no headers, no extensions, no body yet): those go in a
/// box only when there are some, so that a bare GET carries about 140 bytes of replay, not 270.
struct Replay {
    method: Method,
    version: Version,
    uri: UriCopy,
    rest: Option<Box<Rest>>,
    /// Whether the body was kept: if not, the request cannot be sent again.
    body_kept: bool,
}

/// The parts of a request that are often empty.
struct Rest {
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

impl Replay {
    /// Copies a request that does not carry the token yet; `body` is `None` when it cannot be
    /// kept.
    #[inline]
    fn copy<B>(request: &Request<B>, body: Option<Bytes>) -> Replay {
        let body_kept = body.is_some();
        let body = body.unwrap_or_default();
        let (headers, extensions) = (request.headers(), request.extensions());
        let rest = (!headers.is_empty() || !extensions.is_empty() || !body.is_empty()).then(|| {
            Box::new(Rest {
                headers: headers.clone(),
                extensions: extensions.clone(),
                body,
            })
        });
        Replay {
            method: request.method().clone(),
            version: request.version(),
            uri: UriCopy::of(request.uri()),
            rest,
            body_kept,
        }
    }

    /// The method and path the request went to.
    #[cold]
    fn endpoint(&self) -> Endpoint {
        let path = match &self.uri {
            UriCopy::Inline(text) => Uri::try_from(text.as_str())
                .map(|uri| uri.path().to_owned())
                .unwrap_or_default(),
            UriCopy::Shared(uri) => uri.path().to_owned(),
        };
        Endpoint {
            method: self.method.clone(),
            path,
        }
    }

    /// The request again, without a token yet; `None` if its body was not kept or its URI
    /// cannot be rebuilt.
    fn request<B: From<Bytes>>(&self) -> Option<Request<B>> {
        if !self.body_kept {
            return None;
        }
        let mut request = match &self.rest {
            Some(rest) => {
                let mut request = Request::new(B::from(rest.body.clone()));
                *request.headers_mut() = rest.headers.clone();
                *request.extensions_mut() = rest.extensions.clone();
                request
            }
            None => Request::new(B::from(Bytes::new())),
        };
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.uri()?;
        *request.version_mut() = self.version;
        Some(request)
    }
}

/// A request's URI, kept for a replay.
///
/// `Uri::clone` costs about 60 ns on the request path: it shares the URI's buffers, which takes
/// an allocation, reference counting and an extra free for a URI parsed from a string. Most URIs
/// are short, so their text is copied inline (a few ns) and parsed again only for a replay.
enum UriCopy {
    Inline(ArrayString<96>),
    Shared(Uri),
}

impl UriCopy {
    #[inline]
    fn of(uri: &Uri) -> UriCopy {
        let mut text = ArrayString::new();
        let written = match (uri.scheme_str(), uri.authority(), uri.path_and_query()) {
            (Some(scheme), Some(authority), path) => text
                .try_push_str(scheme)
                .and_then(|()| text.try_push_str("://"))
                .and_then(|()| text.try_push_str(authority.as_str()))
                .and_then(|()| text.try_push_str(path.map_or("", |path| path.as_str()))),
            (None, None, Some(path)) => text.try_push_str(path.as_str()),
            _ => return UriCopy::Shared(uri.clone()),
        };
        match written {
            Ok(()) => UriCopy::Inline(text),
            Err(_) => UriCopy::Shared(uri.clone()),
        }
    }

    fn uri(&self) -> Option<Uri> {
        match self {
            UriCopy::Inline(text) => Uri::try_from(text.as_str()).ok(),
            UriCopy::Shared(uri) => Some(uri.clone()),
        }
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
    S: HttpService<ReqBody, ResBody = ResBody>,
    ReqBody: RequestBody,
    ResBody: ResponseBody,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self::new(State::Passthrough { future })
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn failed(error: Error) -> Self {
        Self::new(State::Failed { error: Some(error) })
    }

    /// A request that has a token, sent by a ready service.
    #[inline]
    pub(crate) fn warm(
        ready: Ready<'_, S>,
        replayer: Arc<Replayer<S>>,
        request: Request<ReqBody>,
        header: HeaderValue,
        generation: u64,
    ) -> Self {
        let ctx = Ctx {
            replayer,
            generation,
        };
        Self::new(warm(ready, ctx, request, header))
    }

    /// A request that waits for a login first: `inner` is a clone, not ready.
    ///
    /// The wait for the login and the request are boxed: a rare state kept out of the future's
    /// size, which every request moves.
    #[cold]
    #[inline(never)]
    pub(crate) fn cold(inner: S, replayer: Arc<Replayer<S>>, request: Request<ReqBody>) -> Self {
        let cache = &replayer.cache;
        Self::new(State::Waiting {
            login: Box::pin(cache.token(login_fn(&cache.config, &inner))),
            cold: Some(Box::new(Cold {
                inner,
                replayer,
                request,
            })),
        })
    }

    /// A request whose whole course is a boxed future (see [`Auth::budgeted`]).
    ///
    /// [`Auth::budgeted`]: crate::Auth
    #[cold]
    #[inline(never)]
    pub(crate) fn slow(future: BoxFuture<Result<Response<ResBody>, BoxError>>) -> Self {
        Self::new(State::Slow { future })
    }

    /// `future`, then the renewal it took up.
    #[cold]
    #[inline(never)]
    pub(crate) fn joined(future: Self, renewal: BoxFuture<()>) -> Self {
        Self::new(State::Slow {
            future: Box::pin(async move {
                let output = future.await;
                renewal.await;
                output
            }),
        })
    }

    #[inline]
    fn new(state: State<S, ReqBody>) -> Self {
        ResponseFuture { state }
    }
}

/// The state of a request that has a token, sent by a ready service. Out of line: inlined into
/// `ResponseFuture::warm` it cost 74 instructions more per warm request (callgrind, see
/// BENCHMARKS.md).
#[inline(never)]
fn warm<S, ReqBody>(
    ready: Ready<'_, S>,
    ctx: Ctx<S>,
    request: Request<ReqBody>,
    header: HeaderValue,
) -> State<S, ReqBody>
where
    S: Service<Request<ReqBody>> + Clone,
    ReqBody: Body,
{
    let limit = ctx.replayer.cache.config.replay_body_limit;
    let replay = match Keep::for_body(request.body(), limit) {
        Keep::Empty => Replay::copy(&request, Some(Bytes::new())),
        // A large or streaming body: its cost dwarfs a copy of the headers.
        Keep::Nothing => Replay::copy(&request, None),
        Keep::Buffer => {
            // The body is read before the request is sent: the ready service waits with it.
            let sender = match ready {
                Ready::Owned(inner) => inner,
                Ready::Borrowed(inner) => {
                    // A clone (not ready) stays for the `Auth`'s next request.
                    let clone = inner.clone();
                    std::mem::replace(inner, clone)
                }
            };
            let (parts, body) = request.into_parts();
            return State::Buffering {
                body,
                buffer: BodyBuffer::Empty,
                pending: Some(Box::new(Pending {
                    sender,
                    ctx,
                    parts,
                    header,
                    limit,
                })),
            };
        }
    };
    // No clone of the inner service or the cache: the `Auth`'s ready service sends.
    let future = match ready {
        Ready::Owned(mut inner) => authorize(&mut inner, request, header),
        Ready::Borrowed(inner) => authorize(inner, request, header),
    };
    State::Sent {
        future,
        ctx: Some(ctx),
        replay: Some(replay),
    }
}

/// Attaches the token and calls the (ready) inner service.
#[inline]
fn authorize<S, ReqBody>(
    inner: &mut S,
    mut request: Request<ReqBody>,
    header: HeaderValue,
) -> S::Future
where
    S: Service<Request<ReqBody>>,
{
    request.headers_mut().insert(AUTHORIZATION, header);
    inner.call(request)
}

impl<S, ReqBody> Future for ResponseFuture<S, ReqBody>
where
    S: HttpService<ReqBody>,
    ReqBody: RequestBody,
{
    type Output = Result<Response<S::ResBody>, BoxError>;

    /// # Panics
    ///
    /// If polled again after it returned `Ready`, in whatever state it ended, as `async` blocks
    /// and tower's own futures do: "ResponseFuture polled after completion".
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_state(self.project().state, cx)
    }
}

/// `?` for a state that ends in an error: the request is `Done`.
macro_rules! end_on_error {
    ($state:expr, $result:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => {
                $state.set(State::Done);
                return Poll::Ready(Err(error.into()));
            }
        }
    };
}

/// Drives the request through its states until it has a response or an error, and leaves it
/// `Done`. Each state that ends returns its output itself: moving a response through one more
/// frame costs a `memcpy` per request.
#[inline]
fn poll_state<S, ReqBody, ResBody>(
    mut state: Pin<&mut State<S, ReqBody>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, BoxError>>
where
    S: HttpService<ReqBody, ResBody = ResBody>,
    ReqBody: RequestBody,
    ResBody: ResponseBody,
{
    loop {
        match state.as_mut().project() {
            StateProj::Passthrough { future } => {
                let output = ready!(future.poll(cx)).map_err(Into::into);
                state.set(State::Done);
                return Poll::Ready(output);
            }
            StateProj::Buffering {
                body,
                buffer,
                pending,
            } => {
                let limit = pending.as_ref().expect(POLLED_AFTER_COMPLETION).limit;
                let bytes = end_on_error!(state, ready!(buffer.poll_fill(body, limit, cx)));
                let Pending {
                    mut sender,
                    ctx,
                    parts,
                    header,
                    ..
                } = *pending.take().expect(POLLED_AFTER_COMPLETION);
                let request = Request::from_parts(parts, ReqBody::from(bytes.clone()));
                let replay = Replay::copy(&request, Some(bytes));
                state.set(State::Sent {
                    future: authorize(&mut sender, request, header),
                    ctx: Some(ctx),
                    replay: Some(replay),
                });
            }
            StateProj::Sent {
                future,
                ctx,
                replay,
            } => {
                let response = end_on_error!(state, ready!(future.poll(cx)));
                if response.status() != StatusCode::UNAUTHORIZED {
                    // Evidence that the token is good, and that this endpoint does not refuse.
                    // Read in place: moving the replay copy out costs a `memcpy` per request.
                    let (Some(ctx), Some(replay)) = (ctx.as_ref(), replay.as_ref()) else {
                        panic!("{POLLED_AFTER_COMPLETION}");
                    };
                    let answer = (response.status(), response.headers());
                    ctx.replayer
                        .cache
                        .answered(ctx.generation, answer, || replay.endpoint());
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                let ctx = ctx.take().expect(POLLED_AFTER_COMPLETION);
                let replay = replay.take().expect(POLLED_AFTER_COMPLETION);
                let future = Box::pin(recover(ctx, replay, response));
                state.set(State::Slow { future });
            }
            StateProj::Waiting { login, cold } => {
                let (token, after) = end_on_error!(state, ready!(login.as_mut().poll(cx)));
                let cold = cold.take().expect(POLLED_AFTER_COMPLETION);
                state.set(State::Readying {
                    cold: Some((cold, token, after)),
                });
            }
            StateProj::Readying { cold } => {
                let (pending, ..) = cold.as_mut().expect(POLLED_AFTER_COMPLETION);
                end_on_error!(state, ready!(pending.inner.poll_ready(cx)));
                let (pending, token, after) = cold.take().expect(POLLED_AFTER_COMPLETION);
                let (header, generation) = (token.header.clone(), token.generation);
                let Cold {
                    inner,
                    replayer,
                    request,
                } = *pending;
                let ctx = Ctx {
                    replayer,
                    generation,
                };
                let warm = warm(Ready::Owned(inner), ctx, request, header);
                match after {
                    None => state.set(warm),
                    Some(after) => {
                        let warm = ResponseFuture::new(warm);
                        state.set(ResponseFuture::joined(warm, after).state);
                    }
                }
            }
            StateProj::Slow { future } => {
                let output = ready!(future.as_mut().poll(cx));
                state.set(State::Done);
                return Poll::Ready(output);
            }
            StateProj::Failed { error } => {
                let error = error.take().expect(POLLED_AFTER_COMPLETION);
                state.set(State::Done);
                return Poll::Ready(Err(error.into()));
            }
            StateProj::Done => panic!("{POLLED_AFTER_COMPLETION}"),
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

/// The check of a token that settles a bare 401 ([`CheckFn`]): a `GET` to the endpoint's path
/// on `refused`'s origin, through a clone of the inner service, under the API budget.
fn check_fn<S, ReqBody>(replayer: Arc<Replayer<S>>, mut inner: S, refused: Option<Uri>) -> CheckFn
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
async fn recover<S, ReqBody, ResBody>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_copies_give_the_same_uri_back() {
        let long = format!(
            "https://core.wearepatchworks.com/api/v1/{}",
            "x".repeat(200)
        );
        for (uri, inline) in [
            (
                "https://core.wearepatchworks.com/api/v1/flows?page=2&sort=name",
                true,
            ),
            ("https://core.wearepatchworks.com", true),
            ("http://127.0.0.1:8080/api/v1/login", true),
            ("https://[::1]:8443/x?y", true),
            ("/api/v1/flows?page=2", true),
            ("*", true),
            (long.as_str(), false),
        ] {
            let original: Uri = uri.parse().unwrap();
            let copy = UriCopy::of(&original);
            assert_eq!(matches!(copy, UriCopy::Inline(_)), inline, "{uri}");
            let back = copy.uri().unwrap();
            assert_eq!(back, original, "{uri}");
            assert_eq!(back.to_string(), original.to_string(), "{uri}");
        }
    }
}
