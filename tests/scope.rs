//! Which requests get the token, and what never shows the secrets.

mod support;

use http::{header::AUTHORIZATION, Request, Response, StatusCode};
use http_body_util::Full;
use patchworks_auth::{test_util::FakePatchworks, AuthLayer, Credentials};
use std::sync::{Arc, Mutex};
use support::*;
use tower::{service_fn, BoxError, Layer, ServiceExt};

#[tokio::test]
async fn other_origins_get_the_request_untouched_and_trigger_no_login() {
    let fake = FakePatchworks::start().await.unwrap();
    let elsewhere = FakePatchworks::start().await.unwrap();
    let client = client(&fake);

    let response = send(&client, get(elsewhere.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fake.logins(), 0);
    assert_eq!(elsewhere.seen()[0].authorization, None);

    // The login origin itself is trusted.
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::OK
    );
    // Still nothing for the other origin, with a token in the cache.
    send(&client, get(elsewhere.uri("/x"))).await.unwrap();
    assert!(elsewhere.seen().iter().all(|s| s.authorization.is_none()));
    assert_eq!(elsewhere.logins(), 0);
}

#[tokio::test]
async fn a_plain_http_login_url_to_another_host_is_refused_without_io() {
    let calls = Arc::new(Mutex::new(0));
    let inner = service_fn({
        let calls = calls.clone();
        move |_: Request<Full<bytes::Bytes>>| {
            *calls.lock().unwrap() += 1;
            async { Ok::<_, BoxError>(Response::new(Full::<bytes::Bytes>::default())) }
        }
    });
    let layer = AuthLayer::new(Credentials::new("a@b.c", "pw"))
        .login_url("http://login.example.com/api/v1/login".parse().unwrap());
    let error = layer
        .layer(inner)
        .oneshot(get("https://core.wearepatchworks.com/api/v1/flows"
            .parse()
            .unwrap()))
        .await
        .unwrap_err();
    let error = auth_error(&error);
    assert!(error.is_config());
    assert!(error.to_string().contains("plain-text HTTP"), "{error}");
    assert_eq!(*calls.lock().unwrap(), 0);
}

#[tokio::test]
async fn the_token_header_is_marked_sensitive_and_debug_hides_every_secret() {
    let fake = FakePatchworks::start().await.unwrap();
    let sensitive = Arc::new(Mutex::new(Vec::new()));
    let client = fake.client();
    let inner = service_fn({
        let sensitive = sensitive.clone();
        move |request: Request<Full<bytes::Bytes>>| {
            if let Some(value) = request.headers().get(AUTHORIZATION) {
                sensitive.lock().unwrap().push(value.is_sensitive());
            }
            client.request(request)
        }
    });
    let layer = support::layer(&fake);
    let service = layer.layer(inner);
    let response = service
        .clone()
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*sensitive.lock().unwrap(), [true]);

    let token = last_api_authorization(&fake).unwrap();
    let token = token.strip_prefix("Bearer ").unwrap();
    let password = patchworks_auth::test_util::PASSWORD;
    for shown in [
        format!("{layer:?}"),
        format!("{:?}", fake.credentials()),
        format!("{:?}", support::layer(&fake)),
    ] {
        assert!(!shown.contains(token), "token in {shown}");
        assert!(!shown.contains(password), "password in {shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

/// The fake's address under another origin: `localhost` instead of `127.0.0.1`. The same
/// server, so the token it issued is good there.
fn other_origin(fake: &FakePatchworks) -> String {
    format!("http://localhost:{}", fake.addr().port())
}

/// An OAuth 2 API on another origin than its token endpoint gets the token once that origin
/// is trusted (`AuthLayer::trust_origin`), and not before; so does the ready client's base URL
/// there, and an API key behind a gateway.
#[tokio::test]
async fn a_trusted_origin_gets_the_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let api = other_origin(&fake);
    let orders = format!("{api}/v1/acme/orders")
        .parse::<http::Uri>()
        .unwrap();
    let layer = || AuthLayer::new(fake.client_credentials()).login_url(fake.token_url());

    let untrusted = layer().layer(fake.client());
    let response = send(&untrusted, get(orders.clone())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fake.logins(), 0, "no token asked for");

    let trusted = layer()
        .trust_origin(api.parse().unwrap())
        .layer(fake.client());
    let response = send(&trusted, get(orders.clone())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 1);
    let seen = fake.seen().into_iter().last().unwrap();
    assert!(seen.authorization.unwrap().starts_with("Bearer "));

    // The ready client on that origin.
    let client = layer()
        .trust_origin(api.parse().unwrap())
        .https_client()
        .try_base_url(format!("{api}/v1/").parse().unwrap())
        .unwrap();
    let request = Request::get("/acme/orders")
        .body(patchworks_auth::body::Body::empty())
        .unwrap();
    assert_eq!(
        client.oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );

    // An API key behind a gateway: no login URL it never uses.
    fake.accept_api_key("pk_live_4f9a");
    let key = AuthLayer::new(Credentials::api_key("pk_live_4f9a"))
        .trust_origin(api.parse().unwrap())
        .layer(fake.client());
    let response = send(&key, get(orders)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = fake.seen().into_iter().last().unwrap();
    assert_eq!(seen.authorization.as_deref(), Some("pk_live_4f9a"));
}

#[test]
fn a_trusted_origin_is_an_origin_the_token_may_go_to() {
    let layer = || AuthLayer::new(Credentials::api_key("pk_live_4f9a"));
    for good in [
        "https://api.example.com",
        "https://api.example.com:8443/",
        "http://127.0.0.1:9",
    ] {
        assert!(
            layer().try_trust_origin(good.parse().unwrap()).is_ok(),
            "{good}"
        );
    }
    for bad in [
        "http://api.example.com",
        "https://api.example.com/v1",
        "https://ops:pw@api.example.com",
        "/v1",
    ] {
        let error = layer().try_trust_origin(bad.parse().unwrap()).unwrap_err();
        assert!(error.is_config(), "{bad}");
        let built = layer().trust_origin(bad.parse().unwrap());
        assert_eq!(
            built.check_config().unwrap_err().to_string(),
            error.to_string()
        );
        assert!(!error.to_string().contains(":pw@"), "{error}");
    }
}
