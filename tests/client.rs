//! `AuthLayer::https_client()`: the ready client, against the fake Patchworks over loopback.

use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use patchworks_auth::{test_util::FakePatchworks, AuthLayer, Credentials, PatchworksClient};
use tower::ServiceExt;

fn client(fake: &FakePatchworks) -> PatchworksClient {
    AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .https_client()
        .base_url(fake.uri("/api/v1/"))
}

fn get_path(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

#[tokio::test]
async fn paths_go_to_the_base_url_with_the_token() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    assert!(!client.state().usable, "lazy");
    client.login().await.unwrap();
    assert!(client.state().usable);
    let response = client
        .clone()
        .oneshot(get_path("/flows?page=2"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = fake.seen().into_iter().last().unwrap();
    assert_eq!(seen.path, "/api/v1/flows");
    assert!(seen.authorization.is_some());
    assert_eq!(fake.logins(), 1);

    // Appended to the base's path, never resolved out of it: a base without its trailing
    // slash is the same base, and a `..` segment is refused unsent.
    let no_slash = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .https_client()
        .base_url(fake.uri("/api/v1"));
    let response = no_slash.oneshot(get_path("/flows")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        fake.seen().into_iter().last().unwrap().path,
        "/api/v1/flows"
    );
    let calls = fake.api_calls();
    // `..` however it is spelled: percent-encoded in either case (RFC 3986 §6.2.2.2), encoded
    // twice, with a `;` parameter, or behind an encoded slash or a backslash.
    for path in [
        "/../admin/users",
        "/%2e%2e/admin",
        "/.%2E/admin",
        "/%2E./admin",
        "/flows/%2e%2e/%2E%2e/admin",
        "/%252e%252e/admin",
        "/..;/admin",
        "/..%2Fadmin",
        "/..%5cadmin",
        "/..\\admin",
    ] {
        let Ok(request) = Request::get(path).body(Full::default()) else {
            continue; // not even a URI
        };
        let error = client.clone().oneshot(request).await.unwrap_err();
        let error = error.downcast_ref::<patchworks_auth::Error>().unwrap();
        assert!(error.is_config(), "{path}: {error}");
        assert!(
            error
                .to_string()
                .contains("cannot be sent under the base URL"),
            "{error}"
        );
    }
    assert_eq!(fake.api_calls(), calls, "not sent");
    // Dot segments that stay inside the base are resolved, and the normalized path is sent.
    let response = client
        .clone()
        .oneshot(get_path("/x/%2E%2e/./flows"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        fake.seen().into_iter().last().unwrap().path,
        "/api/v1/flows"
    );
}

#[tokio::test]
async fn redirects_are_followed_and_503s_retried_through_the_layer() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    fake.redirect("/api/v1/old-flows", "/api/v1/flows");
    let response = client
        .clone()
        .oneshot(get_path("/old-flows"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        fake.seen().into_iter().last().unwrap().path,
        "/api/v1/flows"
    );

    fake.fail_api_calls(1, StatusCode::SERVICE_UNAVAILABLE, Some(0));
    let response = client.clone().oneshot(get_path("/flows")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "retried");

    fake.revoke_tokens();
    let response = client.oneshot(get_path("/flows")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "401 recovered");
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn login_fails_with_the_typed_error() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = AuthLayer::new(Credentials::new("ops@example.com", "wrong"))
        .login_url(fake.login_url())
        .https_client();
    assert!(client.login().await.unwrap_err().is_rejected());
}

/// The client in axum state, with no annotations: a handler forwards to Patchworks.
#[tokio::test]
async fn sits_in_axum_state_as_it_is() {
    async fn flows(State(client): State<PatchworksClient>) -> (StatusCode, Bytes) {
        let response = client.oneshot(get_path("/flows")).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }
    let fake = FakePatchworks::start().await.unwrap();
    let app = Router::new()
        .route("/flows", get(flows))
        .with_state(client(&fake));
    let response = app
        .oneshot(
            Request::get("/flows")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn a_base_url_whose_origin_gets_no_token_is_a_configuration_error() {
    let fake = FakePatchworks::start().await.unwrap();
    let elsewhere = FakePatchworks::start().await.unwrap();
    // The login is at `fake`; the base URL at another origin, which the layer does not trust.
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .https_client()
        .base_url(elsewhere.uri("/api/v1/"));
    let error = client.login().await.unwrap_err();
    assert!(error.is_config(), "{error}");
    assert!(
        error.to_string().contains("AuthLayer::login_url"),
        "{error}"
    );
    let error = client.oneshot(get_path("/flows")).await.unwrap_err();
    let error = error.downcast_ref::<patchworks_auth::Error>().unwrap();
    assert!(error.is_config(), "{error}");
    assert_eq!(
        fake.api_calls() + elsewhere.api_calls() + fake.logins(),
        0,
        "no silent 401, no I/O"
    );
}

async fn post<B: patchworks_auth::bounds::AnyBody>(
    client: &PatchworksClient,
    fake: &FakePatchworks,
    body: B,
) -> Bytes {
    let request = Request::post("/flows").body(body).unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    fake.seen().into_iter().last().unwrap().body
}

/// The ready client takes the bodies a hyper-util client does, with no conversion by hand; an
/// axum handler forwards its request's body as it is, and a revocation replays it.
#[tokio::test]
async fn takes_any_request_body() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    assert_eq!(
        post(&client, &fake, http_body_util::Empty::<Bytes>::new()).await,
        ""
    );
    assert_eq!(post(&client, &fake, String::from("string")).await, "string");
    assert_eq!(post(&client, &fake, Full::from("full")).await, "full");
    assert_eq!(
        post(&client, &fake, axum::body::Body::from("axum")).await,
        "axum"
    );

    async fn forward(
        State(client): State<PatchworksClient>,
        request: Request<axum::body::Body>,
    ) -> StatusCode {
        let request = Request::post("/flows").body(request.into_body()).unwrap();
        client.oneshot(request).await.unwrap().status()
    }
    let app = Router::new()
        .route("/forward", axum::routing::post(forward))
        .with_state(client.clone());
    fake.revoke_tokens();
    let request = Request::post("/forward")
        .body(axum::body::Body::from("forwarded"))
        .unwrap();
    assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::OK);
    assert_eq!(fake.seen().into_iter().last().unwrap().body, "forwarded");
    assert_eq!(fake.logins(), 2, "replayed after the revocation");
}

/// A proxy's `Incoming` goes to the ready client as it is (checked by the compiler).
#[allow(dead_code)]
fn forwards_incoming(
    client: PatchworksClient,
    request: Request<hyper::body::Incoming>,
) -> impl std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, tower::BoxError>>
{
    client.oneshot(request)
}

/// A plain-text login URL to a host that is not loopback is refused where the layer is built
/// (`try_login_url`), and by the client's `login` and every call without a byte sent.
#[tokio::test]
async fn a_plain_http_login_url_off_loopback_is_refused_before_any_io() {
    let url: http::Uri = "http://staging.example.com/api/v1/login".parse().unwrap();
    let error = AuthLayer::new(Credentials::new("ops@example.com", "pw"))
        .try_login_url(url.clone())
        .unwrap_err();
    assert!(error.is_config(), "{error}");
    assert!(error.to_string().contains("use https://"), "{error}");
    assert!(
        !format!("{error:?}").contains("pw\""),
        "no password in {error:?}"
    );

    let client = AuthLayer::new(Credentials::new("ops@example.com", "pw"))
        .login_url(url)
        .https_client();
    assert!(client.login().await.unwrap_err().is_config());
    let error = client.oneshot(get_path("/flows")).await.unwrap_err();
    let error = error.downcast_ref::<patchworks_auth::Error>().unwrap();
    assert!(error.is_config(), "{error}");

    // Loopback stays allowed, for tests and local development.
    let loopback = "http://127.0.0.1:8080/api/v1/login".parse().unwrap();
    assert!(AuthLayer::new(Credentials::new("ops@example.com", "pw"))
        .try_login_url(loopback)
        .is_ok());
}

/// The ready client keeps the API budget of 240 a minute unless told otherwise: a 429 pauses
/// it (and `RetryPolicy` retries after the pause); with `no_budget()` there is none to pause.
#[tokio::test]
async fn keeps_a_budget_of_240_a_minute_unless_told_otherwise() {
    let fake = FakePatchworks::start().await.unwrap();
    let budgeted = client(&fake);
    let none = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .no_budget()
        .https_client()
        .base_url(fake.uri("/api/v1/"));
    for (client, pauses) in [(budgeted, 1), (none, 0)] {
        fake.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(0));
        let response = client.clone().oneshot(get_path("/flows")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "retried");
        assert_eq!(client.budget_state().pauses, pauses);
    }
}

/// The ready client under a budget it goes over: a refused request fails with
/// `is_budget_exhausted()` (never a timeout, which the budget's wait used to reach first), after
/// the retry policy retried it, a `POST` included (never sent, so safe to retry).
#[tokio::test]
async fn a_request_over_the_budget_is_refused_as_such_and_retried_whatever_its_method() {
    use patchworks_auth::budget::Budget;
    use std::time::Duration;

    let fake = FakePatchworks::start().await.unwrap();
    let budget = Budget::new(4, Duration::from_secs(60)).max_wait(Duration::from_millis(100));
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .budget(budget)
        .https_client()
        .base_url(fake.uri("/api/v1/"));
    // The login and 3 GETs are the window's 4 units.
    for _ in 0..3 {
        let response = client.clone().oneshot(get_path("/flows")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let post = Request::post("/flows").body(Full::from("{}")).unwrap();
    for request in [get_path("/flows"), post] {
        let method = request.method().clone();
        let refused = client.budget_state().refused;
        let error = client.clone().oneshot(request).await.unwrap_err();
        let error = error.downcast_ref::<patchworks_auth::Error>();
        assert!(
            error.is_some_and(|e| e.is_budget_exhausted()),
            "{method}: {error:?}"
        );
        let tries = client.budget_state().refused - refused;
        assert_eq!(
            tries, 4,
            "{method}: the first try and the policy's 3 retries"
        );
    }
    assert_eq!(fake.api_calls(), 3, "none of them sent");
}

/// The same with the budget's default `max_wait` (30 s), as long as the client's timeout: the
/// refusal still comes as `is_budget_exhausted()`, after the retries, on a paused clock.
#[tokio::test(start_paused = true)]
async fn a_refusal_at_the_default_max_wait_is_not_a_timeout() {
    use patchworks_auth::budget::Budget;
    use std::time::Duration;

    let fake = FakePatchworks::start().await.unwrap();
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .budget(Budget::new(2, Duration::from_secs(3600)))
        .https_client()
        .base_url(fake.uri("/api/v1/"));
    let response = client.clone().oneshot(get_path("/flows")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let error = client
        .clone()
        .oneshot(get_path("/flows"))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<patchworks_auth::Error>();
    assert!(error.is_some_and(|e| e.is_budget_exhausted()), "{error:?}");
    assert_eq!(client.budget_state().refused, 4);
}

/// A cold backlog over the ready client's own budget (240 a minute): 300 GETs at once. The
/// login goes first; every request is answered, or refused with `is_budget_exhausted()` after
/// the retry policy's attempts; none fails as a timeout or a login failure. On a paused clock.
#[tokio::test(start_paused = true)]
async fn a_cold_backlog_over_the_default_budget_is_answered_or_refused_as_such() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    let requests: Vec<_> = (0..300)
        .map(|_| tokio::spawn(client.clone().oneshot(get_path("/flows"))))
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for request in requests {
        match request.await.unwrap() {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                answered += 1;
            }
            Err(error) => {
                let error = error.downcast_ref::<patchworks_auth::Error>();
                assert!(error.is_some_and(|e| e.is_budget_exhausted()), "{error:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(answered + refused, 300);
    assert!(answered >= 239, "{answered} answered, {refused} refused");
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.too_many(), 0);
}
