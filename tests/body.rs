//! Any request body through the layer, by way of `patchworks_auth::body::Body`: `Empty`,
//! `String`, `BoxBody`, `UnsyncBoxBody`, and a forwarded hyper `Incoming` (a proxy on loopback).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use patchworks_auth::{body::Body, test_util::FakePatchworks, Auth, AuthLayer};
use tower::{Layer, ServiceExt};

type Authed = Auth<Client<hyper_util::client::legacy::connect::HttpConnector, Body>>;

fn client(fake: &FakePatchworks) -> Authed {
    AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Body>())
}

async fn send(client: &Authed, request: Request<Body>) -> Response<Incoming> {
    client.clone().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn empty_string_and_boxed_bodies_go_through_and_are_replayed() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    let uri = fake.uri("/api/v1/flows");

    // hyper's usual GET body, through `map_request`.
    let empty = client
        .clone()
        .map_request(|request: Request<Empty<Bytes>>| request.map(Body::from))
        .oneshot(Request::get(uri.clone()).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::OK);

    let bodies: [(&str, Body); 3] = [
        ("string", Body::from(String::from("string"))),
        ("boxed", Body::new(Full::new(Bytes::from("boxed")).boxed())),
        (
            "unsync",
            Body::new(Full::new(Bytes::from("unsync")).boxed_unsync()),
        ),
    ];
    for (text, body) in bodies {
        // A revocation first: each request meets a 401 and is replayed with its body.
        fake.revoke_tokens();
        let request = Request::post(uri.clone()).body(body).unwrap();
        assert_eq!(
            send(&client, request).await.status(),
            StatusCode::OK,
            "{text}"
        );
        let last = fake.seen().into_iter().last().unwrap();
        assert_eq!(last.body, text, "replayed with its body");
    }
    assert_eq!(fake.logins(), 4);
}

/// A proxy on loopback forwards the `Incoming` body of each request it receives to Patchworks.
#[tokio::test]
async fn a_forwarded_incoming_body_goes_through_and_is_replayed() {
    let fake = FakePatchworks::start().await.unwrap();
    let upstream = client(&fake);
    let target = fake.uri("/api/v1/flows");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (upstream, target) = (upstream.clone(), target.clone());
            async move {
                let (mut parts, body) = request.into_parts();
                parts.uri = target;
                let forwarded = Request::from_parts(parts, Body::new(body));
                // A concrete error type: hyper's bound on it trips the compiler when spawned.
                Ok::<_, std::convert::Infallible>(upstream.oneshot(forwarded).await.unwrap())
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });

    fake.revoke_tokens(); // the first forwarded request is a cold one; then a revocation
    let caller = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for text in ["first", "second"] {
        let request = Request::post(format!("http://{proxy}/"))
            .body(Full::new(Bytes::from(text)))
            .unwrap();
        let response = caller.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{text}");
        let _ = response.into_body().collect().await;
        assert_eq!(fake.seen().into_iter().last().unwrap().body, text);
        fake.revoke_tokens();
    }
    assert_eq!(fake.logins(), 2, "the second was replayed after a 401");
    assert_eq!(fake.unauthorized(), 1);
}

/// The crate's one layer order (README, "Layer order"), with `body::Body` outermost.
fn retried<B: patchworks_auth::bounds::AnyBody>(
    fake: &FakePatchworks,
) -> tower::util::BoxCloneService<Request<B>, Response<Incoming>, tower::BoxError> {
    use patchworks_auth::retry::RetryPolicy;
    use std::time::Duration;
    use tower::ServiceBuilder;
    use tower_http::follow_redirect::FollowRedirectLayer;

    let stack = ServiceBuilder::new()
        .map_request(|request: Request<B>| request.map(Body::new))
        .timeout(Duration::from_secs(30))
        .layer(FollowRedirectLayer::new())
        .retry(RetryPolicy::new().backoff(Duration::from_millis(1), Duration::from_millis(2)))
        .layer(AuthLayer::new(fake.credentials()).login_url(fake.login_url()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Body>());
    tower::util::BoxCloneService::new(stack)
}

/// Under `RetryPolicy`, `body::Body` is copied when it is bytes, however it was made, and a
/// streamed body is sent once.
#[tokio::test]
async fn body_under_the_retry_policy_retries_bytes_and_sends_a_stream_once() {
    let fake = FakePatchworks::start().await.unwrap();
    let uri = fake.uri("/api/v1/flows");

    // Bytes: `Full`, `String` and a `Body` stay bytes through `Body::new`.
    let client = retried::<Body>(&fake);
    for (text, body) in [
        ("full", Body::new(Full::new(Bytes::from("full")))),
        ("string", Body::new(String::from("string"))),
        ("from", Body::from("from")),
    ] {
        fake.fail_api_calls(1, StatusCode::SERVICE_UNAVAILABLE, Some(0));
        let calls = fake.api_calls();
        let response = client
            .clone()
            .oneshot(Request::put(uri.clone()).body(body).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{text} retried");
        assert_eq!(fake.api_calls() - calls, 2, "{text}");
        assert_eq!(fake.seen().into_iter().last().unwrap().body, text);
    }

    // axum's `Body`, empty (a GET's, a DELETE's): retried.
    let client = retried::<axum::body::Body>(&fake);
    fake.fail_api_calls(1, StatusCode::SERVICE_UNAVAILABLE, Some(0));
    let calls = fake.api_calls();
    let response = client
        .clone()
        .oneshot(
            Request::put(uri.clone())
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "retried");
    assert_eq!(fake.api_calls() - calls, 2);

    // A stream cannot be copied: sent once, and its 503 returned for the caller to decide.
    fake.fail_api_calls(1, StatusCode::SERVICE_UNAVAILABLE, Some(0));
    let calls = fake.api_calls();
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("streamed"))]);
    let response = client
        .oneshot(
            Request::put(uri)
                .body(axum::body::Body::from_stream(chunks))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fake.api_calls() - calls, 1, "not retried");
    assert_eq!(fake.logins(), 2, "one per client");
}

/// A body of a known size (so the layer reads it to keep it for a replay) that never arrives.
struct Stalled;

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(10)
    }
}

/// A request dropped while its body is read was never sent: its unit of the API budget goes
/// back, on the warm path and on the budgeted one (a request that waited for its turn).
#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_its_body_is_read_gives_its_unit_back() {
    use patchworks_auth::{budget::Budget, test_util::hold_clock};
    use std::time::Duration;
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    // No wait for a turn: a request without a unit is refused at once.
    let budget = Budget::new(3, Duration::from_secs(60)).max_wait(Duration::ZERO);
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .budget(budget)
        .layer(Client::builder(TokioExecutor::new()).build_http::<Body>());
    let get = || {
        Request::get(fake.uri("/api/v1/flows"))
            .body(Body::empty())
            .unwrap()
    };
    // The login's unit and a GET's: one left.
    assert_eq!(
        hold_clock(send(&client, get())).await.status(),
        StatusCode::OK
    );
    for _ in 0..3 {
        let stalled = Request::post(fake.uri("/api/v1/orders"))
            .body(Body::new(Stalled))
            .unwrap();
        let dropped = tokio::time::timeout(Duration::from_millis(100), send(&client, stalled));
        assert!(dropped.await.is_err(), "the body never came");
    }
    assert_eq!(
        hold_clock(send(&client, get())).await.status(),
        StatusCode::OK
    );
    assert_eq!(client.budget_state().refused, 0);
    assert_eq!(fake.api_calls(), 2, "no POST was sent");
}
