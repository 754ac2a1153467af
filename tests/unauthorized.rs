//! 401: discard the token once, log in again, replay once; never a login storm.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use patchworks_auth::test_util::{hold_clock, FakePatchworks};
use std::time::Duration;
use support::*;
use tower::{Layer, Service};

#[tokio::test]
async fn a_revoked_token_is_renewed_and_the_request_replayed() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::OK
    );
    let first = last_api_authorization(&fake).unwrap();

    fake.revoke_tokens();
    let response = send(&client, get(fake.uri("/api/v1/flows?page=2")))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the caller sees the replay's answer"
    );
    assert!(body_string(response).await.contains("/api/v1/flows"));
    assert_eq!(fake.logins(), 2);
    assert_eq!(fake.unauthorized(), 1);
    let second = last_api_authorization(&fake).unwrap();
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_request_recovers_even_when_it_consumed_the_last_service() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    assert_eq!(status(&client, &fake, "/warm").await, StatusCode::OK);
    fake.revoke_tokens();
    // `oneshot` consumes the only handle to the layer while the request is in flight.
    let response = tower::ServiceExt::oneshot(client, get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn many_401s_on_one_revoked_token_give_one_login() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    assert_eq!(status(&client, &fake, "/warm").await, StatusCode::OK);
    fake.revoke_tokens();
    fake.set_login_delay(Duration::from_millis(50));

    let statuses = concurrent_gets(&client, &fake, 50).await;
    assert_all_ok(&statuses);
    assert_eq!(fake.logins(), 2, "one login, then exactly one re-login");
    assert!(fake.unauthorized() >= 1 && fake.unauthorized() <= 50);
    assert_eq!(fake.api_calls(), 1 + 50 + fake.unauthorized());
}

#[tokio::test]
async fn a_replayed_post_carries_the_same_body() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    assert_eq!(status(&client, &fake, "/warm").await, StatusCode::OK);
    fake.revoke_tokens();

    let body = Bytes::from_static(br#"{"name":"nightly sync","enabled":true}"#);
    let request = Request::post(fake.uri("/api/v1/flows"))
        .header("content-type", "application/json")
        .header("x-request-id", "42")
        .body(Full::new(body.clone()))
        .unwrap();
    let response = send(&client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let posts: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == Method::POST && s.path == "/api/v1/flows")
        .collect();
    assert_eq!(posts.len(), 2, "sent, then replayed once");
    assert_eq!(posts[0].body, body);
    assert_eq!(posts[1].body, body);
    assert_ne!(posts[0].authorization, posts[1].authorization);
}

#[tokio::test]
async fn a_body_too_large_to_keep_gets_its_401_after_the_token_is_renewed() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = layer(&fake).replay_body_limit(8).layer(fake.client());
    assert_eq!(status(&client, &fake, "/warm").await, StatusCode::OK);
    fake.revoke_tokens();

    let request = Request::put(fake.uri("/api/v1/flows/1"))
        .body(Full::new(Bytes::from_static(b"more than eight bytes")))
        .unwrap();
    let response = send(&client, request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "returned as is"
    );
    assert_eq!(
        fake.logins(),
        2,
        "the token was renewed before the 401 was returned"
    );
    let calls = fake.api_calls();
    assert_eq!(
        status(&client, &fake, "/api/v1/flows").await,
        StatusCode::OK
    );
    assert_eq!(fake.api_calls(), calls + 1);
    assert_eq!(fake.logins(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_api_that_refuses_everything_does_not_cause_a_login_per_request() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    let attempt = || hold_clock(status(&client, &fake, "/api/v1/forbidden"));
    assert_eq!(attempt().await, StatusCode::OK);
    fake.set_api_status(Some(StatusCode::UNAUTHORIZED));

    let calls = fake.api_calls();
    assert_eq!(attempt().await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        fake.api_calls(),
        calls + 2,
        "sent, replayed once, and no more"
    );
    for _ in 0..100 {
        assert_eq!(attempt().await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        fake.logins(),
        2,
        "one re-login, then the 401s are the API's answer"
    );

    // A minute of requests, ten a second: the layer blames the token again at 1, 2, 4, 8, ...
    // second intervals, not on every request.
    for _ in 0..600 {
        assert_eq!(attempt().await, StatusCode::UNAUTHORIZED);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fake.logins() <= 9, "{} logins", fake.logins());

    // Once the API accepts the token again, nothing is left over.
    fake.set_api_status(None);
    assert_eq!(attempt().await, StatusCode::OK);
}

#[tokio::test]
async fn a_caller_authorization_header_is_left_alone() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    let request = Request::get(fake.uri("/api/v1/flows"))
        .header("authorization", "Bearer caller-chose-this")
        .body(Full::default())
        .unwrap();
    let response = send(&client, request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "no 401 handling"
    );
    assert_eq!(fake.logins(), 0);
    assert_eq!(
        last_api_authorization(&fake).as_deref(),
        Some("Bearer caller-chose-this")
    );
}

#[tokio::test(start_paused = true)]
async fn revocations_in_quick_succession_are_each_recovered() {
    // Found by the soak: a grace on 401s that went by time alone took the second of two quick
    // revocations for an API refusing everything, and handed callers its 401s.
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    let attempt = || hold_clock(status(&client, &fake, "/api/v1/flows"));
    assert_eq!(attempt().await, StatusCode::OK);
    for round in 0..5 {
        fake.revoke_tokens();
        assert_eq!(attempt().await, StatusCode::OK, "revocation {round}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.logins(), 6);
}

/// A service kept for many requests (a clone per thread or task) makes a copy of its own for
/// the current token after a few requests (so that its requests write no memory other clones
/// write). Everything a clone made for one request does, it does too: recover from a 401 with a
/// replay (body included), even once the service is dropped, and take each new token.
#[tokio::test]
async fn a_long_lived_service_recovers_and_follows_new_tokens_like_a_fresh_clone() {
    let fake = FakePatchworks::start().await.unwrap();
    let mut service = client(&fake);
    async fn call(service: &mut Client, request: Request<Full<Bytes>>) -> StatusCode {
        tower::ServiceExt::ready(service)
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap()
            .status()
    }
    let flows = || get(fake.uri("/api/v1/flows"));
    for _ in 0..40 {
        assert_eq!(call(&mut service, flows()).await, StatusCode::OK);
    }
    assert_eq!(fake.logins(), 1);

    // A GET and a POST on the same long-lived service, each with a revoked token.
    fake.revoke_tokens();
    assert_eq!(call(&mut service, flows()).await, StatusCode::OK);
    assert_eq!((fake.logins(), fake.unauthorized()), (2, 1));
    let new_token = last_api_authorization(&fake).unwrap();
    for _ in 0..40 {
        assert_eq!(call(&mut service, flows()).await, StatusCode::OK);
    }
    assert_eq!(fake.unauthorized(), 1, "every request took the new token");
    assert_eq!(last_api_authorization(&fake).unwrap(), new_token);

    fake.revoke_tokens();
    let body = Bytes::from_static(br#"{"name":"nightly sync"}"#);
    let post = Request::post(fake.uri("/api/v1/flows"))
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(call(&mut service, post).await, StatusCode::OK);
    let posts: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|seen| seen.method == Method::POST && seen.path == "/api/v1/flows")
        .collect();
    assert_eq!(posts.len(), 2, "sent, then replayed once");
    assert!(posts.iter().all(|seen| seen.body == body));
    assert_eq!((fake.logins(), fake.unauthorized()), (3, 2));

    // In flight with a revoked token when its service, the last handle, is dropped.
    for _ in 0..40 {
        assert_eq!(call(&mut service, flows()).await, StatusCode::OK);
    }
    fake.revoke_tokens();
    let response = {
        let ready = tower::ServiceExt::ready(&mut service).await.unwrap();
        ready.call(flows())
    };
    drop(service);
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    assert_eq!((fake.logins(), fake.unauthorized()), (4, 3));
}

/// An inner service that replaces the body of every API call with its tag.
#[derive(Clone)]
struct Tagger {
    tag: &'static str,
    client: patchworks_auth::test_util::HttpClient,
}

impl Service<Request<Full<Bytes>>> for Tagger {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Full<Bytes>>) -> Self::Future {
        if request.uri().path() != patchworks_auth::test_util::LOGIN_PATH {
            *request.body_mut() = Full::new(Bytes::from_static(self.tag.as_bytes()));
        }
        self.client.call(request)
    }
}

/// `get_mut` changes what the service's replays go through, too: they are not sent by the copy
/// of the inner service that its clones share.
#[tokio::test]
async fn a_replay_goes_through_the_inner_service_as_get_mut_left_it() {
    let fake = FakePatchworks::start().await.unwrap();
    let tagger = Tagger {
        tag: "before",
        client: fake.client(),
    };
    let mut service = layer(&fake).layer(tagger);
    let post = || {
        Request::post(fake.uri("/api/v1/flows"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    for _ in 0..40 {
        let ready = tower::ServiceExt::ready(&mut service).await.unwrap();
        assert_eq!(ready.call(post()).await.unwrap().status(), StatusCode::OK);
    }
    service.get_mut().tag = "after";
    fake.revoke_tokens();
    let ready = tower::ServiceExt::ready(&mut service).await.unwrap();
    assert_eq!(ready.call(post()).await.unwrap().status(), StatusCode::OK);

    let bodies: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|seen| seen.path == "/api/v1/flows")
        .map(|seen| seen.body)
        .collect();
    assert_eq!(bodies.len(), 42, "40, then one sent and replayed");
    assert_eq!(bodies[40], "after", "sent");
    assert_eq!(bodies[41], "after", "replayed");
}

/// A second revocation within the cool-down of the first (10 s after a login a 401 caused):
/// the first bare 401 comes from a path that has not answered the new token, which the
/// cool-down alone would return as the API's answer. A check of the token (a `GET` that
/// answered it) settles it: answered 401, the token was revoked; the caller gets its replay's
/// 200, never the 401.
#[tokio::test(start_paused = true)]
async fn a_second_revocation_within_the_cooldown_is_settled_by_a_check_not_returned() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    hold_clock(async {
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        fake.revoke_tokens();
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        assert_eq!(fake.logins(), 2);
    })
    .await;
    tokio::time::advance(Duration::from_secs(2)).await;
    hold_clock(async {
        fake.revoke_tokens();
        let calls = fake.api_calls();
        expect_status(&client, &fake, "/api/v1/projects", StatusCode::OK).await;
        assert_eq!(fake.logins(), 3, "the revocation recovered");
        assert_eq!(
            fake.api_calls(),
            calls + 3,
            "the request, the check, the replay"
        );
        let seen = fake.seen();
        let api: Vec<_> = seen.iter().filter(|s| s.path != "/api/v1/login").collect();
        let last: Vec<_> = api[api.len() - 3..]
            .iter()
            .map(|s| (s.method.as_str(), s.path.as_str()))
            .collect();
        assert_eq!(
            last,
            [
                ("GET", "/api/v1/projects"),
                ("GET", "/api/v1/flows"),
                ("GET", "/api/v1/projects")
            ],
            "the request, the check with a GET that answered the token, the replay"
        );
    })
    .await;
}
