//! The response future: sends the request with the token and recovers once from a 401.
//!
//! The warm path (a fresh token, a 2xx answer) is a hand-written state machine that allocates
//! nothing for the token. Everything rarer (waiting for a login, recovering from a 401) is
//! boxed, off the hot path. What a state that waits keeps (a login's request, a body being
//! read) is boxed too, so that the future every request moves is the inner future, the replay
//! copy, the unit's guard and a pointer: 144 bytes over hyper-util's client.

use crate::{
    bounds::BoxFuture,
    bounds::{HttpService, RequestBody, ResponseBody},
    budget::Spent,
    cache::Cache,
    error::{Error, Kind},
    login::login_fn,
    token::Endpoint,
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

mod recover;
mod replay;

use recover::recover;

use replay::{BodyBuffer, Keep, Replay};

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
    #[project_replace = StateOwned]
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
            pending: Box<Pending<S>>,
        },
        // Sent with the token; a 401 moves on to `Slow`.
        Sent {
            #[pin] future: S::Future,
            ctx: Ctx<S>,
            replay: Replay,
        },
        // Waiting for a token, a unit or readiness (`Auth::slow`), or recovering from a 401.
        Slow { future: BoxFuture<Result<S::Response, BoxError>> },
        // The layer cannot be used (its configuration is refused).
        Failed { error: Error },
        // The response (or error) was returned.
        Done,
    }
}

/// What ended a state that moves on to the next: the next state is made from it and from
/// what the state owned, which [`State::project_replace`] hands over.
enum Event<Response> {
    Buffered(Bytes),
    Unauthorized(Response),
    Failed,
}

/// The one message of a `ResponseFuture` polled again after it returned `Ready`.
const POLLED_AFTER_COMPLETION: &str = "ResponseFuture polled after completion";

/// What a sent request needs to recover from a 401: a service to log in and replay with, the
/// cache, and which token it carried; and its unit of the API budget, which goes back if the
/// request is dropped before it is handed to the service below (its body still being read).
struct Ctx<S> {
    replayer: Arc<Replayer<S>>,
    generation: u64,
    spent: Spent,
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

/// A request waiting for its body to be buffered: `sender` is ready. Boxed in the future.
struct Pending<S> {
    sender: S,
    ctx: Ctx<S>,
    parts: http::request::Parts,
    header: HeaderValue,
    limit: usize,
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
        Self::new(State::Failed { error })
    }

    /// A request that has a token and its unit of the budget (if any), sent by a ready service.
    #[inline]
    pub(crate) fn warm(
        ready: Ready<'_, S>,
        replayer: Arc<Replayer<S>>,
        request: Request<ReqBody>,
        (header, generation): (HeaderValue, u64),
        spent: Spent,
    ) -> Self {
        let ctx = Ctx {
            replayer,
            generation,
            spent,
        };
        Self::new(warm(ready, ctx, request, header))
    }

    /// A request whose whole course is a boxed future: one that waits (`Auth::slow`).
    #[cold]
    #[inline(never)]
    pub(crate) fn slow(future: BoxFuture<Result<Response<ResBody>, BoxError>>) -> Self {
        Self::new(State::Slow { future })
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
                pending: Box::new(Pending {
                    sender,
                    ctx,
                    parts,
                    header,
                    limit,
                }),
            };
        }
    };
    // No clone of the inner service or the cache: the `Auth`'s ready service sends.
    let future = match ready {
        Ready::Owned(mut inner) => authorize(&mut inner, request, header),
        Ready::Borrowed(inner) => authorize(inner, request, header),
    };
    let mut ctx = ctx;
    ctx.spent.sending();
    State::Sent {
        future,
        ctx,
        replay,
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
/// frame costs a `memcpy` per request. A state that moves on says what ended it (an [`Event`]);
/// the next state is then made from that and what the state owned, moved out with
/// `project_replace` as tower's `retry/future.rs` does.
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
        let event = match state.as_mut().project() {
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
                let fill = buffer.poll_fill(body, pending.limit, cx);
                Event::Buffered(end_on_error!(state, ready!(fill)))
            }
            StateProj::Sent {
                future,
                ctx,
                replay,
            } => {
                let output = ready!(future.poll(cx));
                ctx.spent.answered();
                match output {
                    Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                        Event::Unauthorized(response)
                    }
                    output => {
                        if let Ok(response) = &output {
                            // Evidence that the token is good, and that this endpoint does not
                            // refuse. Read in place: moving the replay copy or the response
                            // costs a `memcpy` per request.
                            let answer = (response.status(), response.headers());
                            let cache = &ctx.replayer.cache;
                            cache.answered(ctx.generation, answer, || replay.endpoint());
                        }
                        state.set(State::Done);
                        return Poll::Ready(output.map_err(Into::into));
                    }
                }
            }
            StateProj::Slow { future } => {
                let output = ready!(future.as_mut().poll(cx));
                state.set(State::Done);
                return Poll::Ready(output);
            }
            StateProj::Failed { .. } => Event::Failed,
            StateProj::Done => panic!("{POLLED_AFTER_COMPLETION}"),
        };
        let next = match (event, state.as_mut().project_replace(State::Done)) {
            (Event::Buffered(bytes), StateOwned::Buffering { pending, .. }) => {
                let Pending {
                    mut sender,
                    mut ctx,
                    parts,
                    header,
                    ..
                } = *pending;
                let request = Request::from_parts(parts, ReqBody::from(bytes.clone()));
                let replay = Replay::copy(&request, Some(bytes));
                let future = authorize(&mut sender, request, header);
                ctx.spent.sending();
                State::Sent {
                    future,
                    ctx,
                    replay,
                }
            }
            (Event::Unauthorized(response), StateOwned::Sent { ctx, replay, .. }) => {
                let future = Box::pin(recover(ctx, replay, response));
                State::Slow { future }
            }
            (Event::Failed, StateOwned::Failed { error }) => return Poll::Ready(Err(error.into())),
            _ => unreachable!("each event is made by the state it ends"),
        };
        state.set(next);
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
