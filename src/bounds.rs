//! The bounds [`Auth`](crate::Auth) puts on the service it wraps and on bodies, as trait
//! aliases: three names in its signatures instead of nine predicates.
//!
//! Each is implemented for every type that meets it and sealed: you never implement them, and
//! an error that names one lists what is missing. The precedent is hyper-util's `Connect`.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::BoxError;
use tower_service::Service;

/// A boxed future the layer's rarer paths (login waits, replays, checks) run as.
pub(crate) type BoxFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

mod sealed {
    pub trait Service<ReqBody> {}
    pub trait Body {}
}

/// A service the layer can wrap: an HTTP client service it can clone (to log in and to
/// replay), whose futures it can move across threads, and whose errors it can box.
///
/// Implemented for every `S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone +
/// Send + 'static` whose `Future` is `Send + 'static`, whose `Error` is `Into<BoxError>`, and
/// whose response body is a [`ResponseBody`]: hyper-util's client, a `service_fn`, a
/// `BoxCloneService`, a tower stack of those.
pub trait HttpService<ReqBody>:
    sealed::Service<ReqBody>
    + Service<
        Request<ReqBody>,
        Response = Response<Self::ResBody>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
    /// The body of the service's responses.
    type ResBody: ResponseBody;
}

impl<S, ReqBody, ResBody> sealed::Service<ReqBody> for S where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>
{
}

impl<S, ReqBody, ResBody> HttpService<ReqBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: ResponseBody,
{
    type ResBody = ResBody;
}

/// A request body the layer can rebuild from bytes, for its login and for a replay:
/// `Full<Bytes>`, axum's `Body`, or [`body::Body`](crate::body::Body), which takes any other.
///
/// Implemented for every `http_body::Body + From<Bytes> + Send + 'static` whose `Data` is `Send`
/// and whose `Error` is `Into<BoxError>`.
pub trait RequestBody:
    sealed::Body + Body<Data: Send, Error: Into<BoxError>> + From<Bytes> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: Body<Data: Send, Error: Into<BoxError>> + From<Bytes> + Send + 'static
{
}

/// Any request body: what `PatchworksClient` (feature `rustls`) sends and
/// [`body::Body::new`](crate::body::Body::new) takes. `Full<Bytes>`, `Empty<Bytes>`, `String`,
/// axum's `Body`, a forwarded `hyper::body::Incoming`, a `BoxBody`, a
/// [`body::Body`](crate::body::Body).
///
/// Implemented for every `http_body::Body<Data = Bytes> + Send + 'static` whose `Error` is
/// `Into<BoxError>`.
pub trait AnyBody:
    sealed::Body + Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> AnyBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// A response body the layer can read a login answer from.
///
/// Implemented for every `http_body::Body + Send + 'static` whose `Data` is `Send` and whose
/// `Error` is `Into<BoxError>`.
pub trait ResponseBody:
    sealed::Body + Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B: Body> sealed::Body for B {}
