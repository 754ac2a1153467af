//! The configuration rule (crate docs, "Configuration errors"): a bad value given to a plain
//! builder method fails `login()` and every request with `is_config()`, unsent; its `try_` form
//! returns that error at once. One test a configuration point.

mod support;

use http::{Request, StatusCode};
use patchworks_auth::{
    body::Body, budget::Budget, test_util::FakePatchworks, AuthLayer, Credentials,
};
use std::time::Duration;
use support::*;
use tower::{Layer, ServiceExt};

/// `client` fails `login()` and a request to `fake` with a configuration error, and sends
/// nothing.
async fn refused_unsent(client: &Client, fake: &FakePatchworks) -> patchworks_auth::Error {
    let login = client.login::<http_body_util::Full<bytes::Bytes>>().await;
    let error = layer_error(client, fake, "/api/v1/flows").await;
    assert!(error.is_config(), "{error}");
    assert!(login.unwrap_err().is_config());
    assert_eq!(fake.seen().len(), 0, "nothing sent");
    error
}

#[tokio::test]
async fn a_plain_text_login_url() {
    let fake = FakePatchworks::start().await.unwrap();
    let url: http::Uri = "http://staging.example.com/api/v1/login".parse().unwrap();
    let client = AuthLayer::new(fake.credentials())
        .login_url(url.clone())
        .layer(fake.client());
    let error = refused_unsent(&client, &fake).await;
    let tried = AuthLayer::new(fake.credentials()).try_login_url(url);
    assert_eq!(tried.unwrap_err().to_string(), error.to_string());
}

#[tokio::test]
async fn an_api_key_that_is_not_a_header_value() {
    let fake = FakePatchworks::start().await.unwrap();
    let key = "pk_live\r\nX-Evil: 1";
    let client = AuthLayer::new(Credentials::api_key(key))
        .login_url(fake.login_url())
        .layer(fake.client());
    let error = refused_unsent(&client, &fake).await;
    assert!(!error.to_string().contains("pk_live"), "{error}");
    assert!(Credentials::try_api_key(key).unwrap_err().is_config());
    assert!(Credentials::try_api_key("").unwrap_err().is_config());
    assert!(Credentials::try_api_key("pk_live_4f9a").is_ok());
}

#[tokio::test]
async fn a_budget_that_could_never_send() {
    let fake = FakePatchworks::start().await.unwrap();
    for budget in [
        Budget::new(0, Duration::from_secs(60)),
        Budget::new(10, Duration::ZERO),
        Budget::per_minute(0),
    ] {
        // Whatever the order of the builder calls.
        let before = AuthLayer::new(fake.credentials())
            .budget(budget)
            .login_url(fake.login_url())
            .layer(fake.client());
        let error = refused_unsent(&before, &fake).await;
        assert!(error.to_string().contains("above zero"), "{error}");
        let after = AuthLayer::new(fake.credentials())
            .login_url(fake.login_url())
            .budget(budget)
            .layer(fake.client());
        refused_unsent(&after, &fake).await;
    }
    assert!(Budget::try_new(0, Duration::from_secs(60))
        .unwrap_err()
        .is_config());
    assert!(Budget::try_new(1, Duration::ZERO).unwrap_err().is_config());
    assert!(Budget::try_new(240, Duration::from_secs(60)).is_ok());
}

#[tokio::test]
async fn a_base_url_whose_origin_gets_no_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let elsewhere = FakePatchworks::start().await.unwrap();
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .https_client();
    let tried = client.clone().try_base_url(elsewhere.uri("/api/v1/"));
    assert!(tried.unwrap_err().is_config());
    let plain = client.clone().base_url(elsewhere.uri("/api/v1/"));
    assert!(plain.login().await.unwrap_err().is_config());
    let request = Request::get("/flows").body(Body::empty()).unwrap();
    let error = plain.oneshot(request).await.unwrap_err();
    let error = error.downcast_ref::<patchworks_auth::Error>().unwrap();
    assert!(error.is_config(), "{error}");
    assert_eq!(
        fake.seen().len() + elsewhere.seen().len(),
        0,
        "nothing sent"
    );
    let good = client.try_base_url(fake.uri("/api/v1/")).unwrap();
    let request = Request::get("/flows").body(Body::empty()).unwrap();
    assert_eq!(
        good.oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );
}

/// A clone of a layer shares its token; a builder method called on a clone starts its own,
/// empty cache (documented on `AuthLayer`): configure first, clone after.
#[tokio::test]
async fn a_builder_method_on_a_clone_starts_its_own_token_cache() {
    let fake = FakePatchworks::start().await.unwrap();
    let layer = AuthLayer::new(fake.credentials()).login_url(fake.login_url());
    let clone = layer.clone();
    let reconfigured = layer.clone().login_timeout(Duration::from_secs(5));
    let client = layer.layer(fake.client());
    client
        .login::<http_body_util::Full<bytes::Bytes>>()
        .await
        .unwrap();
    assert!(clone.state().usable, "a clone shares the token");
    assert!(
        !reconfigured.state().usable,
        "a reconfigured clone has none"
    );
    let other = reconfigured.layer(fake.client());
    other
        .login::<http_body_util::Full<bytes::Bytes>>()
        .await
        .unwrap();
    assert_eq!(fake.logins(), 2, "one login for each cache");
    assert_eq!(client.state().logins, 1);
}
