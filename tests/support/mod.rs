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
