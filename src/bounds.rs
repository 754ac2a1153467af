//! The bounds the layer puts on the service it wraps and its bodies, written once as trait
//! aliases.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::BoxError;
use tower_service::Service;

/// What the layer asks of the service it wraps, beyond `Service`: it can clone it (to log in and
/// to replay), move it and its futures across threads, and box its errors.
///
/// A trait alias: implemented for every such service, so the bounds are written once.
pub(crate) trait HttpService<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> HttpService<ReqBody, ResBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
}

/// What the layer asks of a request body: it can rebuild one from bytes (a login, a replay).
pub(crate) trait RequestBody:
    Body<Data: Send, Error: Into<BoxError>> + From<Bytes> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: Body<Data: Send, Error: Into<BoxError>> + From<Bytes> + Send + 'static
{
}

/// What the layer asks of a response body: it can read a login answer from it.
pub(crate) trait ResponseBody:
    Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}
