//! What a request keeps to be sent again after a 401: its parts, its URI, its body.

use super::*;

/// Everything of a request but its token, to send it again, and to tell which endpoint a 401
/// came from.
///
/// Kept small for the common request (no headers, no extensions, no body yet): those go in a
/// box only when there are some, so that a bare GET carries about 140 bytes of replay, not 270.
pub(super) struct Replay {
    pub(super) method: Method,
    pub(super) version: Version,
    /// The URI's text, parsed again only for a 401 ([`Replay::uri`]).
    uri: String,
    pub(super) rest: Option<Box<Rest>>,
    /// Whether the body was kept: if not, the request cannot be sent again.
    pub(super) body_kept: bool,
}

/// The parts of a request that are often empty.
pub(super) struct Rest {
    pub(super) headers: HeaderMap,
    pub(super) extensions: Extensions,
    pub(super) body: Bytes,
}

impl Replay {
    /// Copies a request that does not carry the token yet; `body` is `None` when it cannot be
    /// kept.
    #[inline]
    pub(super) fn copy<B>(request: &Request<B>, body: Option<Bytes>) -> Replay {
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
            uri: text(request.uri()),
            rest,
            body_kept,
        }
    }

    /// The method and path the request went to.
    #[cold]
    pub(super) fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.method.clone(), &self.uri().unwrap_or_default())
    }

    /// The URI the request went to.
    pub(super) fn uri(&self) -> Option<Uri> {
        Uri::try_from(self.uri.as_str()).ok()
    }

    /// The request again, without a token yet; `None` if its body was not kept.
    pub(super) fn request<B: From<Bytes>>(&self) -> Option<Request<B>> {
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
        *request.uri_mut() = self.uri()?;
        *request.version_mut() = self.version;
        Some(request)
    }
}

/// A URI's text, which parses back to it.
///
/// Not `Uri::clone`: that shares the URI's buffers, which for a URI parsed from a string costs
/// an allocation and four atomic reference counts on every request, a seventh of a warm
/// request's time (BENCHMARKS.md); copying its text costs one allocation.
#[inline]
fn text(uri: &Uri) -> String {
    let (scheme, authority) = (uri.scheme_str(), uri.authority());
    let path = uri.path_and_query().map_or("", |path| path.as_str());
    let mut text = String::with_capacity(
        scheme.map_or(0, |scheme| scheme.len() + 3)
            + authority.map_or(0, |a| a.as_str().len())
            + path.len(),
    );
    if let (Some(scheme), Some(authority)) = (scheme, authority) {
        text.push_str(scheme);
        text.push_str("://");
        text.push_str(authority.as_str());
    }
    text.push_str(path);
    text
}

/// How a request's body can be kept for a replay.
pub(super) enum Keep {
    /// No body: a replay sends an empty one.
    Empty,
    /// A known size within the limit: read it first.
    Buffer,
    /// Streaming or too large: sent as it is, not replayable.
    Nothing,
}

impl Keep {
    pub(super) fn for_body<B: Body>(body: &B, limit: usize) -> Keep {
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

/// A request body being read into memory.
pub(super) enum BodyBuffer {
    Empty,
    /// One chunk, kept without a copy (the common case: a `Full` body).
    One(Bytes),
    Many(BytesMut),
}

impl BodyBuffer {
    /// Reads `body` to its end. Trailers are dropped: the body is rebuilt with `From<Bytes>`.
    pub(super) fn poll_fill<B>(
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

    pub(super) fn len(&self) -> usize {
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
    fn a_uri_text_parses_back_to_the_uri() {
        for uri in [
            "https://core.wearepatchworks.com/api/v1/flows?page=2&per_page=50",
            "https://core.wearepatchworks.com",
            "http://127.0.0.1:4000/api/v1/flows",
            "http://[::1]:3000/x/%2e%2e/y",
            "/api/v1/flows?q=a%20b",
            "/",
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(Uri::try_from(text(&uri)).unwrap(), uri, "{uri}");
        }
        let built = Uri::builder()
            .scheme("https")
            .authority("svc-fabric.pwks.co")
            .path_and_query("/api/v1/x")
            .build()
            .unwrap();
        assert_eq!(Uri::try_from(text(&built)).unwrap(), built);
    }
}
