//! [`Body`]: one request body type for any body, so that any request can go through the layer.
//!
//! The layer needs a request body it can build from bytes: for its login, and to replay a request
//! after a 401. `Full<Bytes>` is one, and axum's `Body`; `Empty<Bytes>`, `String`, `BoxBody`,
//! `UnsyncBoxBody` and hyper's `Incoming` are not. Build the client with [`Body`] as its request
//! body, and turn each request's body into one:
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Empty;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use patchworks_auth::{body::Body, AuthLayer, Credentials};
//! use tower::ServiceBuilder;
//!
//! let client = ServiceBuilder::new()
//!     // Any body: `Empty`, `String`, `BoxBody`, a forwarded `Incoming`, ...
//!     .map_request(|request: Request<Empty<Bytes>>| request.map(Body::new))
//!     .layer(AuthLayer::new(Credentials::new("ops@example.com", "hunter2")))
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Body>());
//! ```
//!
//! Bytes, `Full<Bytes>`, `Empty<Bytes>`, `String`, `Vec<u8>` and `&'static str` convert with
//! `From` and stay unboxed; any other body is boxed by [`Body::new`]. A body of known size up to
//! the [replay limit](crate::AuthLayer::replay_body_limit) is kept for a replay, whatever its
//! type; a streamed body is sent once, and if it meets a 401 that 401 is returned once the token
//! is renewed.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use std::{
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
    /// `BoxBody`, a stream. Bytes (`Full<Bytes>`, `String`, ...) are better converted with
    /// `From`, which does not box them.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body {
            kind: Kind::Boxed {
                body: body.map_err(Into::into).boxed_unsync(),
            },
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
