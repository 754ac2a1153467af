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
