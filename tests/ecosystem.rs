//! The layer with the rest of the ecosystem: the retry policy, redirects, API keys, start-up
//! checks and tracing.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use patchworks_auth::{retry::RetryPolicy, test_util::FakePatchworks, AuthLayer, Credentials};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use support::*;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

fn quick_retries() -> RetryPolicy {
    RetryPolicy::new().backoff(Duration::from_millis(1), Duration::from_millis(10))
}

#[tokio::test]
async fn the_retry_policy_retries_idempotent_requests_on_503() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = ServiceBuilder::new()
        .retry(quick_retries())
        .layer(layer(&fake))
        .service(fake.client());
    fake.fail_api_calls(2, StatusCode::SERVICE_UNAVAILABLE, None);
    let response = client
        .clone()
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.api_calls(), 3, "two 503s, then the answer");
    assert_eq!(fake.logins(), 1);

    // A POST may have been applied: never retried.
    fake.fail_api_calls(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let post = Request::post(fake.uri("/api/v1/flows"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = client.clone().oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fake.api_calls(), 4);

    // At most 3 retries by default.
    fake.fail_api_calls(10, StatusCode::BAD_GATEWAY, None);
    let response = client
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(fake.api_calls(), 4 + 4);
}

/// A 429 with a `Retry-After` is retried through the layer, and the retry gets its token. How
/// long the retry waits is `retry::tests::a_retry_waits_out_its_retry_after`'s, on a paused
/// clock.
#[tokio::test]
async fn the_retry_policy_retries_a_429_through_the_layer() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = ServiceBuilder::new()
        .retry(quick_retries())
        .layer(layer(&fake))
        .service(fake.client());
    fake.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(1));
    let response = client
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!((fake.logins(), fake.unauthorized()), (1, 0));
}

#[tokio::test]
async fn the_retry_policy_retries_refused_connections_a_bounded_number_of_times() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let fake = FakePatchworks::start().await.unwrap();
    let http = http_service(&fake);
    let counting = service_fn({
        let attempts = attempts.clone();
        move |request: Request<Full<Bytes>>| {
            attempts.fetch_add(1, Ordering::SeqCst);
            http.clone().oneshot(request)
        }
    });
    let client = ServiceBuilder::new()
        .retry(quick_retries().max_retries(2))
        .service(counting);
    let uri: http::Uri = format!("http://127.0.0.1:{port}/api/v1/flows")
        .parse()
        .unwrap();
    let error = client.oneshot(get(uri)).await.unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "{error}");
}

#[tokio::test]
async fn redirects_outside_the_layer_never_carry_the_token_to_another_origin() {
    let fake = FakePatchworks::start().await.unwrap();
    let elsewhere = FakePatchworks::start().await.unwrap();
    fake.redirect("/api/v1/moved", &elsewhere.uri("/landing").to_string());
    fake.redirect("/api/v1/old-flows", "/api/v1/flows");
    let client = ServiceBuilder::new()
        .layer(tower_http::follow_redirect::FollowRedirectLayer::new())
        .layer(layer(&fake))
        .service(fake.client());

    let response = client
        .clone()
        .oneshot(get(fake.uri("/api/v1/old-flows")))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "same origin: followed with the token"
    );
    assert!(last_api_authorization(&fake).is_some());

    client
        .oneshot(get(fake.uri("/api/v1/moved")))
        .await
        .unwrap();
    assert_eq!(elsewhere.seen().len(), 1);
    assert_eq!(elsewhere.seen()[0].authorization, None);
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn an_api_key_is_sent_as_it_is_with_no_login() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.accept_api_key("pk_test_4f9a2c");
    let layer = AuthLayer::new(Credentials::api_key("pk_test_4f9a2c")).login_url(fake.login_url());
    let client = layer.layer(fake.client());
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::OK
    );
    assert_eq!(
        last_api_authorization(&fake).as_deref(),
        Some("pk_test_4f9a2c")
    );
    assert_eq!(fake.logins(), 0);
    assert!(client.state().usable);
    assert_eq!(client.state().expires_at, None);

    // Another origin gets nothing; a 401 comes back as it is, with no login.
    let elsewhere = FakePatchworks::start().await.unwrap();
    send(&client, get(elsewhere.uri("/x"))).await.unwrap();
    assert_eq!(elsewhere.seen()[0].authorization, None);
    fake.accept_api_key("another-key");
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fake.logins(), 0);
    assert!(!format!("{layer:?}").contains("pk_test_4f9a2c"));

    let bad = AuthLayer::new(Credentials::api_key("bad\r\nkey")).layer(fake.client());
    let error = send(&bad, get(fake.uri("/api/v1/flows")))
        .await
        .unwrap_err();
    assert!(auth_error(&error).is_config(), "{error}");
    assert!(!error.to_string().contains("bad\r\nkey"));
}

#[tokio::test]
async fn a_start_up_login_reports_bad_credentials_and_the_state_shows_no_secret() {
    let fake = FakePatchworks::start().await.unwrap();
    let bad = AuthLayer::new(Credentials::new(patchworks_auth::test_util::EMAIL, "nope"))
        .login_url(fake.login_url())
        .layer(fake.client());
    let error = bad.login().await.unwrap_err();
    assert!(error.is_rejected());
    let state = bad.state();
    assert!(!state.usable);
    assert_eq!(state.logins, 1);
    assert!(state.last_error.unwrap().is_rejected());

    let good = client(&fake);
    good.login().await.unwrap();
    good.login().await.unwrap();
    assert_eq!(fake.logins(), 2, "the second call found the token cached");
    let state = good.state();
    assert!(state.usable && state.last_error.is_none());
    let lifetime = state.expires_at.unwrap() - state.obtained_at.unwrap();
    assert_eq!(lifetime, Duration::from_secs(24 * 60 * 60));
}
