//! `patchworks_auth::reqwest::AuthMiddleware` in a `reqwest_middleware::ClientWithMiddleware`,
//! against the fake Patchworks over loopback TCP.

use http::StatusCode;
use patchworks_auth::{reqwest::AuthMiddleware, test_util::FakePatchworks, AuthLayer, Credentials};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

mod support;
use support::until;

fn client(fake: &FakePatchworks, layer: AuthLayer) -> (ClientWithMiddleware, AuthMiddleware) {
    let reqwest = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let middleware = AuthMiddleware::new(layer.login_url(fake.login_url()), reqwest.clone());
    let client = ClientBuilder::new(reqwest).with(middleware.clone()).build();
    (client, middleware)
}

/// `GET path` fails with the layer's own error: that error.
async fn layer_error(
    client: &ClientWithMiddleware,
    fake: &FakePatchworks,
    path: &str,
) -> patchworks_auth::Error {
    let error = client
        .get(fake.uri(path).to_string())
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("not the middleware's error: {error}")
    };
    error.downcast::<patchworks_auth::Error>().unwrap()
}

async fn get(client: &ClientWithMiddleware, fake: &FakePatchworks, path: &str) -> StatusCode {
    let response = client.get(fake.uri(path).to_string()).send().await;
    response.unwrap().status()
}

#[tokio::test]
async fn logs_in_once_for_concurrent_requests_and_reuses_the_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let (client, middleware) = client(&fake, AuthLayer::new(fake.credentials()));
    assert!(!middleware.state().usable, "lazy: no login yet");
    let statuses =
        futures_util::future::join_all((0..20).map(|_| get(&client, &fake, "/api/v1/flows"))).await;
    assert!(statuses.iter().all(|status| *status == StatusCode::OK));
    assert_eq!(get(&client, &fake, "/api/v1/flows").await, StatusCode::OK);
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.api_calls(), 21);
    assert!(middleware.state().usable);
}

#[tokio::test]
async fn a_revoked_token_is_renewed_and_the_request_replayed_with_its_body() {
    let fake = FakePatchworks::start().await.unwrap();
    let (client, _) = client(&fake, AuthLayer::new(fake.credentials()));
    assert_eq!(get(&client, &fake, "/api/v1/flows").await, StatusCode::OK);
    fake.revoke_tokens();
    let response = client
        .post(fake.uri("/api/v1/flows").to_string())
        .body(r#"{"name":"nightly"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 2);
    let last = fake.seen().into_iter().last().unwrap();
    assert_eq!(last.body, r#"{"name":"nightly"}"#, "replayed with its body");
}

#[tokio::test]
async fn a_streamed_body_meets_its_401_and_the_next_request_has_a_new_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let (client, _) = client(&fake, AuthLayer::new(fake.credentials()));
    assert_eq!(get(&client, &fake, "/api/v1/flows").await, StatusCode::OK);
    fake.revoke_tokens();
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>("{}")]);
    let response = client
        .post(fake.uri("/api/v1/flows").to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a stream cannot be replayed"
    );
    assert_eq!(get(&client, &fake, "/api/v1/flows").await, StatusCode::OK);
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn a_permission_401_is_returned_as_is_and_other_origins_get_no_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let (client, _) = client(&fake, AuthLayer::new(fake.credentials()));
    fake.forbid(
        "/api/v1/admin",
        Some(r#"Bearer error="insufficient_scope""#),
    );
    assert_eq!(
        get(&client, &fake, "/api/v1/admin").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fake.logins(), 1, "no second login for a permission 401");

    let elsewhere = FakePatchworks::start().await.unwrap();
    let status = client
        .get(format!(
            "http://localhost:{}/api/v1/flows",
            elsewhere.addr().port()
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "sent without a token");
    assert_eq!(elsewhere.seen()[0].authorization, None);
    assert_eq!(elsewhere.logins() + fake.logins(), 1);
}

#[tokio::test]
async fn rejected_credentials_are_a_typed_error() {
    let fake = FakePatchworks::start().await.unwrap();
    let layer = AuthLayer::new(Credentials::new("ops@example.com", "wrong"));
    let (client, _) = client(&fake, layer);
    let error = layer_error(&client, &fake, "/api/v1/flows").await;
    assert!(error.is_rejected(), "{error}");
    assert!(!format!("{error:?}{error}").contains("wrong"));
    assert_eq!(fake.api_calls(), 0);
}

/// The same API budget as the tower layer's: a 429 pauses it, and past `max_wait` a request
/// fails unsent with the typed error.
#[tokio::test(start_paused = true)]
async fn the_budget_pauses_on_a_429_and_refuses_past_max_wait() {
    use patchworks_auth::{budget::Budget, test_util::hold_clock};
    use std::time::Duration;

    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    let budget = Budget::new(4, Duration::from_secs(60)).max_wait(Duration::from_secs(3));
    let layer = AuthLayer::new(fake.credentials()).budget(budget);
    let (client, middleware) = client(&fake, layer);
    let flows = fake.uri("/api/v1/flows").to_string();
    assert_eq!(
        hold_clock(get(&client, &fake, "/api/v1/flows")).await,
        StatusCode::OK
    );
    fake.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(2));
    let status = hold_clock(get(&client, &fake, "/api/v1/flows")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "returned as it is");
    // On the paused clock: not sent before the 429's `Retry-After` (2 s), sent once it passed.
    let paused = tokio::spawn(client.get(flows).send());
    tokio::time::sleep(Duration::from_millis(1990)).await;
    assert!(!paused.is_finished(), "sent during the pause");
    assert_eq!(fake.api_calls(), 2, "sent during the pause");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let response = hold_clock(paused).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The login and three requests took the window's four units: refused after `max_wait`.
    let error = layer_error(&client, &fake, "/api/v1/flows").await;
    assert!(error.is_budget_exhausted(), "{error}");
    assert_eq!(fake.api_calls(), 3, "never sent");
    let state = middleware.budget_state();
    assert_eq!((state.pauses, state.refused), (1, 1), "{state:?}");
}

/// A request that waits for its turn in the budget past its token's life is sent with the
/// token current once its turn came, never with the one it saw before the wait: as the tower
/// layer's requests. On the paused clock, held still for I/O.
#[tokio::test(start_paused = true)]
async fn a_token_that_expires_while_a_request_waits_for_its_turn_is_not_sent() {
    use patchworks_auth::{budget::Budget, test_util::hold_clock};
    use std::time::Duration;

    let fake = FakePatchworks::start().await.unwrap();
    // Sent until 1.8 s; the window frees its first units 3 s on.
    fake.set_token_lifetime(Duration::from_secs(2));
    let budget = Budget::new(2, Duration::from_secs(3)).max_wait(Duration::from_secs(30));
    let layer = AuthLayer::new(fake.credentials())
        .refresh_before(Duration::ZERO)
        .budget(budget);
    let (client, middleware) = client(&fake, layer);
    // The login's unit and this request's: the window is full.
    let status = hold_clock(get(&client, &fake, "/api/v1/flows")).await;
    assert_eq!(status, StatusCode::OK);
    let waiting = tokio::spawn(client.get(fake.uri("/api/v1/flows").to_string()).send());
    let response = hold_clock(async {
        until("the request waits for its turn", || {
            middleware.budget_state().queued == 1
        })
        .await;
        tokio::time::advance(Duration::from_secs(2)).await;
        until("the token is past its life", || !middleware.state().usable).await;
        assert!(!waiting.is_finished(), "its turn has not come");
        // Past the window: its turn, then a login for a new token.
        tokio::time::advance(Duration::from_secs(2)).await;
        let sent_expired = || fake.expired_tokens_seen() > 0;
        until("it is answered", || waiting.is_finished() || sent_expired()).await;
        assert!(!sent_expired(), "the token it saw before its wait was sent");
        waiting.await.unwrap().unwrap()
    })
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.unauthorized(), 0);
    assert_eq!(
        fake.logins(),
        2,
        "a new login once the first token had expired"
    );
}

/// The settling check, sent by the middleware's client: a revocation within the cool-down
/// whose check hangs (past its deadline, the login timeout) or answers 503 is renewed and
/// replayed, never handed to the caller as a 401. On the paused clock, held still for I/O.
#[tokio::test(start_paused = true)]
async fn a_check_that_hangs_or_cannot_tell_hands_no_caller_a_401() {
    use patchworks_auth::test_util::hold_clock;
    use std::time::Duration;

    for answer in [None, Some(StatusCode::SERVICE_UNAVAILABLE)] {
        let fake = FakePatchworks::start().await.unwrap();
        fake.set_token_lifetime(Duration::from_secs(3600));
        let layer = AuthLayer::new(fake.credentials()).login_timeout(Duration::from_secs(5));
        let (client, _) = client(&fake, layer);
        // A revocation renewed: the cool-down, in which `GET /api/v1/flows` answered the token.
        assert_eq!(
            hold_clock(get(&client, &fake, "/api/v1/flows")).await,
            StatusCode::OK
        );
        fake.revoke_tokens();
        assert_eq!(
            hold_clock(get(&client, &fake, "/api/v1/flows")).await,
            StatusCode::OK
        );
        assert_eq!(fake.logins(), 2);
        let checks = || {
            let seen = fake.seen();
            seen.iter().filter(|s| s.path == "/api/v1/flows").count()
        };
        let before = checks();
        fake.revoke_tokens();
        fake.gateway("/api/v1/flows", answer);
        let orders = fake.uri("/api/v1/orders/1").to_string();
        let request = tokio::spawn(client.get(orders).send());
        let response = hold_clock(async {
            until("the check is sent", || checks() == before + 1).await;
            // Past the check's deadline, for the one that hangs.
            tokio::time::advance(Duration::from_secs(6)).await;
            until("it is answered", || request.is_finished()).await;
            request.await.unwrap().unwrap()
        })
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{answer:?}");
        assert_eq!(fake.logins(), 3, "{answer:?}: renewed");
        assert_eq!(checks(), before + 1, "{answer:?}: one check");
    }
}
