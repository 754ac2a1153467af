//! The check that settles a bare 401 within the cool-down after a 401 caused a login (crate
//! docs, "Behaviour"): how each of its answers reads, its deadline, its 429, and its `GET`.
//! On a paused clock, with I/O in `hold_clock`.

mod support;

use http::{Method, StatusCode};
use patchworks_auth::{budget::Budget, test_util::hold_clock, test_util::FakePatchworks};
use std::time::Duration;
use support::*;
use tower::{Layer, ServiceExt};

/// A client whose token was renewed after a revocation, and whose new token answered
/// `GET /api/v1/flows` (the path a check uses): a later bare 401 is settled by a check.
async fn in_the_cool_down(fake: &FakePatchworks) -> Client {
    fake.set_token_lifetime(Duration::from_secs(3600));
    let client = layer(fake)
        .login_timeout(Duration::from_secs(5))
        .budget(Budget::new(1_000, Duration::from_secs(60)))
        .layer(fake.client());
    hold_clock(flows_ok(&client, fake)).await;
    fake.revoke_tokens();
    hold_clock(flows_ok(&client, fake)).await;
    assert_eq!(fake.logins(), 2);
    client
}

/// Requests to the path a check uses (`GET /api/v1/flows`), the checks among them.
fn checks(fake: &FakePatchworks) -> usize {
    fake.seen()
        .iter()
        .filter(|s| s.path == "/api/v1/flows")
        .count()
}

/// A revocation within the cool-down, while the check's path answers 429 or a 5xx (a gateway
/// in front of the API): the check cannot tell, so the 401 is taken as a revocation's, renewed
/// and replayed, never handed to the caller. The check's 429 pauses the budget.
#[tokio::test(start_paused = true)]
async fn a_check_that_cannot_tell_hands_no_caller_a_revocations_401() {
    for status in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let fake = FakePatchworks::start().await.unwrap();
        let client = in_the_cool_down(&fake).await;
        let checks = || checks(&fake);
        let before = checks();
        fake.revoke_tokens();
        fake.gateway("/api/v1/flows", Some(status));
        let request = tokio::spawn(client.clone().oneshot(get(fake.uri("/api/v1/orders/1"))));
        hold_clock(until("the check is answered", || {
            checks() == before + 1 && fake.logins() + client.budget_state().pauses as usize > 2
        }))
        .await;
        let response = hold_clock(async {
            // The check's 429 paused the budget for its `Retry-After` (1 s): the renewal waits.
            tokio::time::advance(Duration::from_millis(1_100)).await;
            request.await.unwrap()
        })
        .await;
        assert_eq!(response.unwrap().status(), StatusCode::OK, "{status}");
        assert_eq!(fake.logins(), 3, "{status}: renewed");
        assert_eq!(checks(), before + 1, "{status}: one check");
        let pauses = client.budget_state().pauses;
        assert_eq!(
            pauses,
            u64::from(status == StatusCode::TOO_MANY_REQUESTS),
            "{status}"
        );
    }
}

/// The check's path hangs: the check has the login timeout as its deadline, and the callers
/// waiting on it are renewed and replayed then, not held.
#[tokio::test(start_paused = true)]
async fn a_check_that_never_answers_ends_at_its_deadline() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = in_the_cool_down(&fake).await;
    fake.revoke_tokens();
    fake.gateway("/api/v1/flows", None);
    let first = tokio::spawn(client.clone().oneshot(get(fake.uri("/api/v1/orders/1"))));
    let second = tokio::spawn(client.clone().oneshot(get(fake.uri("/api/v1/orders/2"))));
    let checks = || checks(&fake);
    let before = checks();
    hold_clock(until("the check is sent", || checks() == before + 1)).await;
    let answers = hold_clock(async {
        // Past the login timeout (5 s): the check gives up.
        tokio::time::advance(Duration::from_secs(6)).await;
        (first.await.unwrap(), second.await.unwrap())
    })
    .await;
    assert_eq!(answers.0.unwrap().status(), StatusCode::OK);
    assert_eq!(answers.1.unwrap().status(), StatusCode::OK);
    assert_eq!(fake.logins(), 3, "one renewal for both");
    assert_eq!(checks(), before + 1, "one check for both");
}

/// Only a path that answered a `GET` with a 2xx is ever checked, with a `GET`: a path that
/// answered a `POST` may not serve a `GET`, or may do something on one.
#[tokio::test(start_paused = true)]
async fn a_path_that_answered_only_posts_is_never_checked() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    fake.forbid("/api/v1/private/*", None);
    let client = client(&fake);
    let post = || {
        http::Request::post(fake.uri("/api/v1/orders"))
            .body(http_body_util::Full::from("{}"))
            .unwrap()
    };
    let ok = hold_clock(send(&client, post())).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    fake.revoke_tokens();
    let replayed = hold_clock(send(&client, post())).await.unwrap();
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 2);
    // In the cool-down: a POST answered with a 2xx is no path to check.
    let ok = hold_clock(send(&client, post())).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    for i in 0..3 {
        let path = format!("/api/v1/private/{i}");
        hold_clock(expect_status(
            &client,
            &fake,
            &path,
            StatusCode::UNAUTHORIZED,
        ))
        .await;
    }
    let gets = fake
        .seen()
        .iter()
        .filter(|s| s.path == "/api/v1/orders" && s.method == Method::GET)
        .count();
    assert_eq!(gets, 0, "no check of a path that answered only POSTs");
}

/// A path that answered on one origin is never the check on another: a bare 401 from an origin
/// where no `GET` answered the token is taken as that API's answer, as without a check, and
/// nothing is sent there in its name. (A trusted API on another origin, in the cool-down.)
#[tokio::test(start_paused = true)]
async fn a_path_that_answered_one_origin_is_never_the_check_on_another() {
    let fake = FakePatchworks::start().await.unwrap();
    let other = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    let other_origin = format!("http://{}", other.addr()).parse().unwrap();
    let client = layer(&fake).trust_origin(other_origin).layer(fake.client());
    hold_clock(flows_ok(&client, &fake)).await;
    fake.revoke_tokens();
    hold_clock(flows_ok(&client, &fake)).await;
    assert_eq!(fake.logins(), 2);
    // `GET /api/v1/flows` answered the new token on `fake`, not on `other`, which knows no
    // token: its 401 is bare.
    hold_clock(expect_status(
        &client,
        &other,
        "/api/v1/reports/1",
        StatusCode::UNAUTHORIZED,
    ))
    .await;
    let checked_there = other
        .seen()
        .iter()
        .filter(|s| s.path == "/api/v1/flows")
        .count();
    assert_eq!(checked_there, 0, "no check with another origin's path");
    assert_eq!(fake.logins(), 2, "no login for it");
    assert_eq!(other.api_calls(), 1);
}
