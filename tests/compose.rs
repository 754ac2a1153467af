//! The layer among the rest of tower: bounds, timeouts, retries, other bodies, limits.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use patchworks_auth::{test_util::FakePatchworks, Auth};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use support::*;
use tower::{
    service_fn, util::BoxCloneService, BoxError, Layer, Service, ServiceBuilder, ServiceExt,
};

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>(_: &T) {}
fn assert_send_static<T: Send + 'static>(_: &T) {}

#[tokio::test]
async fn fits_box_clone_service_and_is_send_sync() {
    let fake = FakePatchworks::start().await.unwrap();
    let mut client = client(&fake);
    assert_send_sync_clone(&client);
    std::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .unwrap();
    let future = client.call(get(fake.uri("/api/v1/flows")));
    assert_send_static(&future);
    assert_eq!(future.await.unwrap().status(), StatusCode::OK);

    let boxed: BoxCloneService<Request<Full<Bytes>>, Response<hyper::body::Incoming>, BoxError> =
        BoxCloneService::new(client);
    let response = boxed.oneshot(get(fake.uri("/api/v1/flows"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn a_caller_timeout_does_not_abort_the_login_others_wait_on() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.hold_logins();
    let client = ServiceBuilder::new()
        .timeout(Duration::from_millis(50))
        .layer(layer(&fake))
        .service(fake.client());

    let error = client
        .clone()
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap_err();
    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
    assert_eq!(fake.logins(), 1);

    fake.release_logins();
    let response = client
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 1, "the first login ran on and was used");
}

/// Retries once on an error of the wrapped service.
#[derive(Clone)]
struct RetryOnce(bool);

impl<ResBody> tower::retry::Policy<Request<Full<Bytes>>, Response<ResBody>, BoxError>
    for RetryOnce
{
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<ResBody>, BoxError>,
    ) -> Option<Self::Future> {
        (result.is_err() && std::mem::take(&mut self.0)).then(|| std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

#[tokio::test]
async fn a_retry_outside_the_layer_resends_with_the_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let failures = Arc::new(AtomicUsize::new(1));
    let http = fake.client();
    let flaky = service_fn({
        let failures = failures.clone();
        move |request: Request<Full<Bytes>>| {
            let fail = request.uri().path() != patchworks_auth::test_util::LOGIN_PATH
                && failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            let http = http.clone();
            async move {
                if fail {
                    return Err::<Response<hyper::body::Incoming>, BoxError>(
                        "connection reset".into(),
                    );
                }
                Ok(http.request(request).await?)
            }
        }
    });
    let client = ServiceBuilder::new()
        .retry(RetryOnce(true))
        .layer(layer(&fake))
        .service(flaky);
    let response = client
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(fake.logins(), 1);
    assert!(last_api_authorization(&fake).is_some());
}

#[tokio::test]
async fn the_login_goes_through_the_wrapped_service() {
    let fake = FakePatchworks::start().await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let http = fake.client();
    let recording = service_fn({
        let seen = seen.clone();
        move |request: Request<Full<Bytes>>| {
            seen.lock()
                .unwrap()
                .push(format!("{} {}", request.method(), request.uri().path()));
            http.request(request)
        }
    });
    let client = layer(&fake).layer(recording);
    let response = client
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        *seen.lock().unwrap(),
        ["POST /api/v1/login", "GET /api/v1/flows"]
    );
}

#[tokio::test]
async fn works_with_axum_bodies() {
    let fake = FakePatchworks::start().await.unwrap();
    let http = fake.client();
    // An outbound client whose requests carry axum's body type.
    let axum_client = service_fn(move |request: Request<axum::body::Body>| {
        let http = http.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let response = http
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            Ok::<_, BoxError>(response)
        }
    });
    let client: Auth<_> = layer(&fake).layer(axum_client);
    let post = || {
        Request::post(fake.uri("/api/v1/flows"))
            .body(axum::body::Body::from(r#"{"name":"x"}"#))
            .unwrap()
    };
    assert_eq!(
        client.clone().oneshot(post()).await.unwrap().status(),
        StatusCode::OK
    );
    fake.revoke_tokens();
    assert_eq!(
        client.oneshot(post()).await.unwrap().status(),
        StatusCode::OK
    );
    let bodies: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.path == "/api/v1/flows")
        .map(|s| s.body)
        .collect();
    assert_eq!(bodies.len(), 3);
    assert!(bodies.iter().all(|b| b.as_ref() == br#"{"name":"x"}"#));
}

#[tokio::test]
async fn a_concurrency_limit_below_the_layer_does_not_deadlock_the_login() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = ServiceBuilder::new()
        .layer(layer(&fake))
        .concurrency_limit(1)
        .service(fake.client());
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (client, uri) = (client.clone(), fake.uri("/api/v1/flows"));
            tokio::spawn(async move { client.oneshot(get(uri)).await.map(|r| r.status()) })
        })
        .collect();
    for request in requests {
        let status = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("deadlocked")
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(fake.logins(), 1);
}

/// An Inbound pusher sends only `POST`s: with `RetryPolicy::retry_429_for_any_method`, a 429 is
/// retried after its `Retry-After`; without it, the caller gets the 429.
#[tokio::test(start_paused = true)]
async fn a_post_answered_429_is_retried_only_when_the_policy_says_so() {
    use patchworks_auth::{retry::RetryPolicy, test_util::hold_clock};
    for (policy, retried) in [
        (RetryPolicy::new(), false),
        (RetryPolicy::new().retry_429_for_any_method(), true),
    ] {
        let fake = FakePatchworks::start().await.unwrap();
        // Set when the 429 reaches the retry policy (which then sleeps its `Retry-After`).
        let throttled = Arc::new(AtomicUsize::new(0));
        let seen = throttled.clone();
        let client = ServiceBuilder::new()
            .retry(policy)
            .map_response(move |response: Response<hyper::body::Incoming>| {
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                response
            })
            .layer(layer(&fake))
            .service(fake.client());
        hold_clock(client.clone().oneshot(get(fake.uri("/api/v1/flows"))))
            .await
            .unwrap();
        fake.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(1));
        let post = Request::post(fake.uri("/api/v1/orders"))
            .body(Full::from("{\"sku\":\"A1\"}"))
            .unwrap();
        let sent = tokio::spawn(client.oneshot(post));
        // The 429 answered (I/O, the clock held), then its second of `Retry-After`.
        hold_clock(until("the 429 is answered", || {
            throttled.load(Ordering::SeqCst) == 1
        }))
        .await;
        let response = hold_clock(async {
            tokio::time::advance(Duration::from_secs(1)).await;
            sent.await.unwrap().unwrap()
        })
        .await;
        let expected = if retried {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(response.status(), expected);
        assert_eq!(fake.api_calls(), if retried { 3 } else { 2 });
    }
}
