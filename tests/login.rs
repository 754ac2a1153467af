//! First use, single flight, and what a failing login does.

mod support;

use bytes::Bytes;
use http::StatusCode;
use patchworks_auth::test_util::{hold_clock, FakePatchworks, LoginAnswer, LOGIN_PATH};
use std::time::Duration;
use support::*;
use tower::Layer;

#[tokio::test]
async fn logs_in_lazily_once_and_reuses_the_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    tokio::task::yield_now().await;
    assert_eq!(fake.logins(), 0, "building the layer must not log in");

    for _ in 0..5 {
        assert_eq!(
            status(&client, &fake, "/api/v1/flows").await,
            StatusCode::OK
        );
    }
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.api_calls(), 5);
    assert_eq!(fake.unauthorized(), 0);

    let seen = fake.seen();
    assert_eq!(seen[0].path, LOGIN_PATH);
    let login: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(login["email"], patchworks_auth::test_util::EMAIL);
    assert_eq!(login["password"], patchworks_auth::test_util::PASSWORD);
    let authorization = seen[1].authorization.clone().unwrap();
    assert!(authorization.starts_with("Bearer ey"), "{authorization}");
    assert!(seen[1..]
        .iter()
        .all(|s| s.authorization.as_ref() == Some(&authorization)));
}

#[tokio::test]
async fn clones_and_services_of_one_layer_share_the_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let layer = layer(&fake);
    let a = tower::Layer::layer(&layer, fake.client());
    let b = tower::Layer::layer(&layer, fake.client());
    assert_eq!(status(&a, &fake, "/a").await, StatusCode::OK);
    assert_eq!(status(&a.clone(), &fake, "/a").await, StatusCode::OK);
    assert_eq!(status(&b, &fake, "/b").await, StatusCode::OK);
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_login() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_login_delay(Duration::from_millis(100));
    let client = client(&fake);
    let statuses = concurrent_gets(&client, &fake, 64).await;
    assert_all_ok(&statuses);
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.api_calls(), 64);
}

#[tokio::test]
async fn dropping_the_caller_that_started_the_login_does_not_cancel_it() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.hold_logins();
    let client = client(&fake);

    let first = tokio::spawn({
        let (client, uri) = (client.clone(), fake.uri("/first"));
        async move { send(&client, get(uri)).await }
    });
    until("the login reaches the server", || fake.logins() == 1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    let second = tokio::spawn({
        let (client, uri) = (client.clone(), fake.uri("/second"));
        async move { send(&client, get(uri)).await.map(|r| r.status()) }
    });
    tokio::task::yield_now().await;
    fake.release_logins();
    assert_eq!(second.await.unwrap().unwrap(), StatusCode::OK);
    assert_eq!(
        fake.logins(),
        1,
        "the second caller waited on the first login"
    );
    assert_eq!(fake.api_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_login_hits_the_login_timeout() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_login_answer(LoginAnswer::Hang);
    let client = tower::Layer::layer(
        &layer(&fake).login_timeout(Duration::from_secs(7)),
        fake.client(),
    );
    let started = tokio::time::Instant::now();
    let error = send(&client, get(fake.uri("/api/v1/flows")))
        .await
        .unwrap_err();
    let error = auth_error(&error);
    assert!(error.is_timeout(), "{error}");
    assert!(error.to_string().contains("7s"), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    assert_eq!(fake.api_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_fail_fast_with_a_growing_backoff() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = tower::Layer::layer(
        &patchworks_auth::AuthLayer::new(patchworks_auth::Credentials::new(
            patchworks_auth::test_util::EMAIL,
            "wrong password",
        ))
        .login_url(fake.login_url()),
        fake.client(),
    );
    let attempt = || hold_clock(send(&client, get(fake.uri("/api/v1/flows"))));

    let first = attempt().await.unwrap_err();
    assert!(auth_error(&first).is_rejected());
    assert_eq!(auth_error(&first).status(), Some(StatusCode::UNAUTHORIZED));
    assert!(!first.to_string().contains("wrong password"));
    for _ in 0..10 {
        let again = attempt().await.unwrap_err();
        assert!(auth_error(&again).is_rejected());
    }
    assert_eq!(fake.logins(), 1, "failed fast during the back-off");

    // Back-offs are jittered upwards by up to half: 5 to 7.5 s, then 10 to 15 s.
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    attempt().await.unwrap_err();
    assert_eq!(fake.logins(), 1, "not before 5 s");
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    assert!(auth_error(&attempt().await.unwrap_err()).is_rejected());
    assert_eq!(fake.logins(), 2, "tried again within 7.5 s");

    tokio::time::sleep(Duration::from_millis(9_900)).await;
    attempt().await.unwrap_err();
    assert_eq!(fake.logins(), 2, "the back-off doubled to at least 10 s");
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    attempt().await.unwrap_err();
    assert_eq!(fake.logins(), 3);
    assert_eq!(fake.api_calls(), 0);
}

/// On a paused clock left to run (the login's back-off sleeps, which a held clock would never
/// let end), with a login timeout of 1 s standing for the default 30 s.
#[tokio::test(start_paused = true)]
async fn a_login_endpoint_that_was_down_recovers_within_three_seconds() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_login_answer(LoginAnswer::Status(StatusCode::SERVICE_UNAVAILABLE));
    let client = support::layer(&fake)
        .login_timeout(Duration::from_secs(1))
        .layer(fake.client());
    let attempt = || send(&client, get(fake.uri("/api/v1/flows")));

    // Down for 4 s: callers fail with the login's error once no attempt fits in their login's
    // time; attempts back off 250 ms, 500 ms, 1 s, then every 2 to 3 s.
    let down = tokio::time::Instant::now();
    // Each caller sees the login's own failure: the 503, or, if the clock ran on while an
    // attempt was in flight (the paused clock jumps to the next timer when nothing is ready to
    // run), that attempt's third of the login timeout.
    let (mut failures, mut unavailable) = (0, 0);
    while down.elapsed() < Duration::from_secs(4) {
        let error = attempt().await.unwrap_err();
        let error = auth_error(&error);
        match error.status() {
            Some(StatusCode::SERVICE_UNAVAILABLE) => unavailable += 1,
            _ => assert!(error.is_timeout(), "{error:?} after {:?}", down.elapsed()),
        }
        failures += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures > 1);
    assert!(unavailable > 0, "no caller saw the 503");
    assert!(fake.logins() <= 7, "{} logins in 4 s", fake.logins());

    fake.set_login_answer(LoginAnswer::Token);
    // Recovered within 3 s: the promise is about this time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hold_clock(attempt()).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_and_hostile_login_answers_are_errors() {
    let fake = FakePatchworks::start().await.unwrap();
    type Check = fn(&patchworks_auth::Error) -> bool;
    let cases: Vec<(LoginAnswer, Check)> = vec![
        (
            LoginAnswer::Body(Bytes::from_static(b"<html>gateway</html>")),
            |e| e.is_malformed(),
        ),
        (
            LoginAnswer::Body(Bytes::from_static(br#"{"message":"ok"}"#)),
            |e| e.is_malformed(),
        ),
        (
            LoginAnswer::Body(Bytes::from_static(br#"{"token":"t","expires_in":-1}"#)),
            |e| e.is_malformed(),
        ),
        (LoginAnswer::Body(Bytes::from(vec![b' '; 1 << 20])), |e| {
            e.is_malformed()
        }),
        (LoginAnswer::RawToken("abc\r\nX-Injected: 1".into()), |e| {
            e.is_unsendable_token()
        }),
        (LoginAnswer::RawToken("two words".into()), |e| {
            e.is_unsendable_token()
        }),
        (LoginAnswer::RawToken(String::new()), |e| {
            e.is_unsendable_token()
        }),
        (LoginAnswer::Status(StatusCode::UNPROCESSABLE_ENTITY), |e| {
            e.is_rejected()
        }),
        (LoginAnswer::Status(StatusCode::NOT_FOUND), |e| {
            e.status() == Some(StatusCode::NOT_FOUND)
        }),
    ];
    for (answer, expected) in cases {
        fake.set_login_answer(answer.clone());
        // A new layer each time: a fresh cache, no back-off from the case before.
        let client = client(&fake);
        let error = send(&client, get(fake.uri("/api/v1/flows")))
            .await
            .unwrap_err();
        let error = auth_error(&error);
        assert!(expected(error), "{answer:?} gave {error:?}");
    }
    assert_eq!(
        fake.api_calls(),
        0,
        "no request was sent without a usable token"
    );
}

#[tokio::test]
async fn a_jwt_without_expires_in_is_used() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_login_answer(LoginAnswer::TokenWithoutExpiresIn);
    let client = client(&fake);
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::OK
    );
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::OK
    );
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn a_username_logs_in_with_the_username_form() {
    use patchworks_auth::{
        test_util::{EMAIL, PASSWORD, USERNAME_LOGIN_PATH},
        AuthLayer, Credentials,
    };
    let fake = FakePatchworks::start().await.unwrap();
    let client = AuthLayer::new(Credentials::username(EMAIL, PASSWORD))
        .login_url(fake.uri(USERNAME_LOGIN_PATH))
        .layer(fake.client());
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::OK
    );
    let seen = fake.seen();
    assert_eq!(seen[0].path, USERNAME_LOGIN_PATH);
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"username": EMAIL, "password": PASSWORD})
    );

    // The email form where the username one is expected is refused, and the error names the
    // credentials given, not the environment variables.
    let email_form = AuthLayer::new(Credentials::new(EMAIL, PASSWORD))
        .login_url(fake.uri(USERNAME_LOGIN_PATH))
        .layer(fake.client());
    let error = layer_error(&email_form, &fake, "/api/v1/flows").await;
    assert!(error.is_rejected(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("given to Credentials") && !message.contains("PATCHWORKS_EMAIL"),
        "{message}"
    );
}
