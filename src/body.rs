//! [`Body`]: one request body type for any body, so that any request can go through the layer.
//!
//! The layer needs a request body it can build from bytes: for its login, and to replay a request
//! after a 401. `Full<Bytes>` is one, and axum's `Body`; `Empty<Bytes>`, `String`, `BoxBody`,
//! `UnsyncBoxBody` and hyper's `Incoming` are not. Build the client with [`Body`] as its request
//! body, and turn each request's body into one, outermost (the crate's [layer
//! order](crate#layer-order)), so that every layer below sees one body type:
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Empty;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use patchworks_auth::{body::Body, retry::RetryPolicy, AuthLayer, Credentials};
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_http::follow_redirect::FollowRedirectLayer;
//!
//! let client = ServiceBuilder::new()
//!     // Any body: `Empty`, `String`, axum's `Body`, a forwarded `Incoming`, ...
//!     .map_request(|request: Request<Empty<Bytes>>| request.map(Body::new))
//!     .timeout(Duration::from_secs(30))
//!     .layer(FollowRedirectLayer::new())
//!     .retry(RetryPolicy::new()) // retries bytes; a streamed body is sent once
//!     .layer(AuthLayer::new(Credentials::new("ops@example.com", "hunter2")))
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Body>());
//! ```
//!
//! Bytes, `Full<Bytes>`, `Empty<Bytes>`, `String`, `Vec<u8>` and `&'static str` convert with
//! `From` and stay unboxed, and so do the first three given to [`Body::new`]; any other body is
//! boxed by it. Bytes are copied for a [retry](crate::retry::RetryPolicy); a streamed body is
//! not retried. A body of known size up to
//! the [replay limit](crate::AuthLayer::replay_body_limit) is kept for a replay, whatever its
//! type; a streamed body is sent once, and if it meets a 401 that 401 is returned once the token
//! is renewed.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use std::{
    any::Any,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};
use tower::BoxError;

pin_project! {
    /// A request body made from any body (see the [module documentation](self)): bytes as they
    /// are, anything else boxed.
    pub struct Body {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Full { #[pin] body: Full<Bytes> },
        Boxed { #[pin] body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl Body {
    /// Any body whose chunks are `Bytes`: a forwarded `hyper::body::Incoming`, axum's `Body`, a
    /// `BoxBody`, a stream. `Full<Bytes>`, `Empty<Bytes>`, `String` and a [`Body`] are taken as
    /// they are (not boxed), as with `From`; any other body is boxed.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Bytes stay bytes, so that a retry or a replay can copy them, whichever way a caller
        // made the body. By type, at run time, as axum's `Body::new` does: stable Rust has no
        // specialization, and no crate offers this.
        let mut slot = Some(body);
        let any: &mut dyn Any = &mut slot;
        if let Some(Some(body)) = any.downcast_mut::<Option<Body>>().map(Option::take) {
            return body;
        }
        if let Some(Some(body)) = any.downcast_mut::<Option<Full<Bytes>>>().map(Option::take) {
            return Body::from(body);
        }
        if let Some(Some(body)) = any.downcast_mut::<Option<String>>().map(Option::take) {
            return Body::from(body);
        }
        if any.is::<Option<Empty<Bytes>>>() {
            return Body::empty();
        }
        match slot {
            Some(body) => Body {
                kind: Kind::Boxed {
                    body: body.map_err(Into::into).boxed_unsync(),
                },
            },
            None => Body::empty(),
        }
    }

    /// A copy of the body, if it can be had without reading it: bytes (from `From`, or
    /// [`new`](Self::new) given bytes) and an empty body can; a streamed body cannot. What
    /// [`RetryPolicy`](crate::retry::RetryPolicy) uses to retry a request.
    pub fn try_clone(&self) -> Option<Body> {
        match &self.kind {
            Kind::Full { body } => Some(Body {
                kind: Kind::Full { body: body.clone() },
            }),
            Kind::Boxed { body } if http_body::Body::size_hint(body).exact() == Some(0) => {
                Some(Body::empty())
            }
            Kind::Boxed { .. } => None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Body::from(Bytes::new())
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::from(Full::new(bytes))
    }
}

impl From<Full<Bytes>> for Body {
    fn from(body: Full<Bytes>) -> Self {
        Body {
            kind: Kind::Full { body },
        }
    }
}

impl From<Empty<Bytes>> for Body {
    fn from(_: Empty<Bytes>) -> Self {
        Body::empty()
    }
}

impl From<String> for Body {
    fn from(body: String) -> Self {
        Body::from(Bytes::from(body))
    }
}

impl From<Vec<u8>> for Body {
    fn from(body: Vec<u8>) -> Self {
        Body::from(Bytes::from(body))
    }
}

impl From<&'static str> for Body {
    fn from(body: &'static str) -> Self {
        Body::from(Bytes::from_static(body.as_bytes()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Boxed { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { body } => body.is_end_stream(),
            Kind::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { body } => body.size_hint(),
            Kind::Boxed { body } => body.size_hint(),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Full { .. } => "Full",
            Kind::Boxed { .. } => "Boxed",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}
