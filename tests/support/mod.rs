//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use patchworks_auth::{
    test_util::{FakePatchworks, HttpClient},
    Auth, AuthLayer,
};
use tower::{BoxError, Layer, ServiceExt};

pub type Client = Auth<HttpClient>;

/// A client stack boxed into one cloneable service.
pub type Client2 =
    tower::util::BoxCloneService<Request<Full<Bytes>>, Response<hyper::body::Incoming>, BoxError>;

/// A layer that logs in at `fake`.
pub fn layer(fake: &FakePatchworks) -> AuthLayer {
    AuthLayer::new(fake.credentials()).login_url(fake.login_url())
}

/// A hyper-util client with the layer, logging in at `fake`.
pub fn client(fake: &FakePatchworks) -> Client {
    layer(fake).layer(fake.client())
}

pub fn get(uri: http::Uri) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

/// Sends `request` through a clone of `client`.
pub async fn send(
    client: &Client,
    request: Request<Full<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, BoxError> {
    client.clone().oneshot(request).await
}

/// `GET path` on `fake` through `client`; its status.
pub async fn status(client: &Client, fake: &FakePatchworks, path: &str) -> StatusCode {
    send(client, get(fake.uri(path))).await.unwrap().status()
}

/// `GET path` on `fake` through `client` answers `expected`.
pub async fn expect_status(
    client: &Client,
    fake: &FakePatchworks,
    path: &str,
    expected: StatusCode,
) {
    assert_eq!(status(client, fake, path).await, expected, "GET {path}");
}

/// `GET /api/v1/flows` answers 200, with the paused clock held while it runs (see
/// `hold_clock`): the warm request most tests make between the steps they are about.
pub async fn flows_ok(client: &Client, fake: &FakePatchworks) {
    let ok = expect_status(client, fake, "/api/v1/flows", StatusCode::OK);
    patchworks_auth::test_util::hold_clock(ok).await;
}

/// `GET path` on `fake` through `client` fails with the layer's own error: that error.
pub async fn layer_error(
    client: &Client,
    fake: &FakePatchworks,
    path: &str,
) -> patchworks_auth::Error {
    let error = send(client, get(fake.uri(path))).await.unwrap_err();
    auth_error(&error).clone()
}

/// The layer's own error inside a `BoxError`.
pub fn auth_error(error: &BoxError) -> &patchworks_auth::Error {
    error
        .downcast_ref::<patchworks_auth::Error>()
        .unwrap_or_else(|| panic!("not a patchworks_auth::Error: {error:?}"))
}

pub async fn body_string(response: Response<hyper::body::Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The `Authorization` header of the last API call `fake` saw.
pub fn last_api_authorization(fake: &FakePatchworks) -> Option<String> {
    fake.seen()
        .into_iter()
        .rev()
        .find(|seen| seen.path != patchworks_auth::test_util::LOGIN_PATH)
        .and_then(|seen| seen.authorization)
}

/// When `fake` received each login, in order.
pub fn login_times(fake: &FakePatchworks) -> Vec<tokio::time::Instant> {
    fake.seen()
        .into_iter()
        .filter(|seen| seen.path == patchworks_auth::test_util::LOGIN_PATH)
        .map(|seen| seen.received_at)
        .collect()
}

/// `GET` on `count` paths of `fake` at once, each from a task of its own; their statuses.
pub async fn concurrent_gets(
    client: &Client,
    fake: &FakePatchworks,
    count: usize,
) -> Vec<StatusCode> {
    let requests: Vec<_> = (0..count)
        .map(|i| {
            let (client, uri) = (client.clone(), fake.uri(&format!("/api/v1/flows/{i}")));
            tokio::spawn(async move { send(&client, get(uri)).await.map(|r| r.status()) })
        })
        .collect();
    let mut statuses = Vec::with_capacity(count);
    for request in requests {
        statuses.push(request.await.unwrap().unwrap());
    }
    statuses
}

/// Asserts that every status is `200 OK` (from [`concurrent_gets`], for one), showing them all
/// if not.
#[track_caller]
pub fn assert_all_ok(statuses: &[StatusCode]) {
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

/// `fake`'s hyper-util client as a plain `tower` service with boxed errors: something to wrap.
pub fn http_service(
    fake: &FakePatchworks,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<hyper::body::Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let http = fake.client();
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let http = http.clone();
        async move { http.request(request).await.map_err(BoxError::from) }
    })
}

/// Lets other tasks run until `condition` holds; fails the test after many tries. Works with a
/// held paused clock, where sleeping would never end.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("timed out waiting until {what}");
}

/// Sleeps in real time until `condition` holds; fails the test after 10 s.
pub async fn until_real(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}
