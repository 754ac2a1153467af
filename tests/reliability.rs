//! A caller never sees an auth failure the layer could have avoided: permission 401s, login
//! blips, readiness held across a login, tokens outliving their runtime, and the smaller holes.
//! Each test here failed on the layer before these were fixed.

mod support;

use bytes::Bytes;
use http::{header::AUTHORIZATION, Request, Response, StatusCode};
use http_body_util::Full;
use patchworks_auth::{
    test_util::{hold_clock, FakePatchworks, LoginAnswer},
    AuthLayer, Credentials,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use support::{auth_error, client, expect_status, get, layer, layer_error, login_times, send};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const INSUFFICIENT_SCOPE: &str =
    r#"Bearer realm="patchworks", error="insufficient_scope", error_description="Forbidden""#;

// 1. Permission 401s.

#[tokio::test(start_paused = true)]
async fn permission_401s_with_a_challenge_never_cost_a_login_and_a_revocation_is_recovered() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.forbid("/api/v1/admin", Some(INSUFFICIENT_SCOPE));
    let client = client(&fake);
    hold_clock(async {
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        for _ in 0..300 {
            let response = send(&client, get(fake.uri("/api/v1/admin"))).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert!(response.headers().contains_key("www-authenticate"));
        }
        assert_eq!(fake.logins(), 1, "a permission 401 is the API's answer");

        fake.revoke_tokens();
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        assert_eq!(fake.logins(), 2);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn permission_401s_without_a_challenge_cost_one_login_per_endpoint_and_a_revocation_is_recovered(
) {
    let fake = FakePatchworks::start().await.unwrap();
    fake.forbid("/api/v1/admin", None);
    let client = client(&fake);
    hold_clock(async {
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        for _ in 0..300 {
            expect_status(&client, &fake, "/api/v1/admin", StatusCode::UNAUTHORIZED).await;
            expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        }
        // The first 401 on /admin could have been a revocation: one login tells them apart.
        assert_eq!(fake.logins(), 2);

        fake.revoke_tokens();
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        assert_eq!(fake.logins(), 3);
        // Within 10 s of a login a 401 caused, once its token answered, a bare 401 from an
        // endpoint that has not answered that token is the API's answer: no login.
        fake.forbid("/api/v1/billing", None);
        expect_status(&client, &fake, "/api/v1/billing", StatusCode::UNAUTHORIZED).await;
        assert_eq!(fake.logins(), 3);
        // After the cool-down, another endpoint's 401 is judged on its own.
        tokio::time::advance(Duration::from_secs(11)).await;
        fake.forbid("/api/v1/reports", None);
        expect_status(&client, &fake, "/api/v1/reports", StatusCode::UNAUTHORIZED).await;
        assert_eq!(fake.logins(), 4);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_revocation_right_after_a_refused_endpoint_is_recovered_on_the_next_good_endpoint() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.forbid("/api/v1/admin", None);
    let client = client(&fake);
    hold_clock(async {
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
        for _ in 0..200 {
            expect_status(&client, &fake, "/api/v1/admin", StatusCode::UNAUTHORIZED).await;
        }
        fake.revoke_tokens();
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    })
    .await;
}

// 2. Login blips.

#[tokio::test]
async fn a_login_blip_is_retried_inside_the_login_and_no_caller_sees_it() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.queue_login_answers([
        LoginAnswer::Status(StatusCode::INTERNAL_SERVER_ERROR),
        LoginAnswer::Status(StatusCode::SERVICE_UNAVAILABLE),
        LoginAnswer::Drop,
        LoginAnswer::Status(StatusCode::BAD_GATEWAY),
    ]);
    let client = client(&fake);
    let statuses = support::concurrent_gets(&client, &fake, 50).await;
    support::assert_all_ok(&statuses);
    assert_eq!(fake.logins(), 5);
    assert_eq!(client.state().logins, 1, "one login, with its own retries");
}

#[tokio::test]
async fn a_login_attempt_that_hangs_gets_a_second_beside_it_within_the_login_timeout() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.queue_login_answers([LoginAnswer::Hang]);
    let client = layer(&fake)
        .login_timeout(Duration::from_secs(3))
        .layer(fake.client());
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn a_login_429_is_not_retried_before_its_retry_after() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.queue_login_answers([LoginAnswer::Throttled { retry_after: 1 }]);
    let client = client(&fake);
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    let logins = login_times(&fake);
    assert_eq!(logins.len(), 2);
    assert!(
        logins[1] - logins[0] >= Duration::from_secs(1),
        "{:?}",
        logins[1] - logins[0]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_login_timeout_fails_fast_and_nothing_is_sent_before_it() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.queue_login_answers([LoginAnswer::Throttled { retry_after: 60 }]);
    let client = client(&fake);
    for _ in 0..30 {
        let error = hold_clock(send(&client, get(fake.uri("/api/v1/flows"))))
            .await
            .unwrap_err();
        assert_eq!(
            auth_error(&error).status(),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(fake.logins(), 1, "no attempt inside the Retry-After");
    tokio::time::sleep(Duration::from_secs(31)).await;
    let ok = hold_clock(send(&client, get(fake.uri("/api/v1/flows")))).await;
    assert_eq!(ok.unwrap().status(), StatusCode::OK);
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn an_outage_longer_than_the_login_timeout_fails_callers_with_what_happened() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.fail_next_logins(1_000, StatusCode::SERVICE_UNAVAILABLE);
    let client = layer(&fake)
        .login_timeout(Duration::from_millis(1500))
        .layer(fake.client());
    let error = layer_error(&client, &fake, "/api/v1/flows").await;
    assert_eq!(
        error.status(),
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{error}"
    );
    assert!(fake.logins() >= 2, "retried inside the login");
    assert!(error.to_string().contains("503"), "{error}");
}

#[tokio::test]
async fn rejected_credentials_fail_at_once_without_retries() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = AuthLayer::new(Credentials::new(patchworks_auth::test_util::EMAIL, "wrong"))
        .login_url(fake.login_url())
        .layer(fake.client());
    assert!(layer_error(&client, &fake, "/api/v1/flows")
        .await
        .is_rejected());
    assert_eq!(fake.logins(), 1);
}

// 3. Readiness is never held across a login.

fn limited(fake: &FakePatchworks, limit: usize) -> support::Client2 {
    ServiceBuilder::new()
        .layer(layer(fake))
        .map_err(BoxError::from)
        .concurrency_limit(limit)
        .service(support::http_service(fake))
        .boxed_clone()
}

fn buffered(fake: &FakePatchworks, bound: usize) -> support::Client2 {
    ServiceBuilder::new()
        .layer(layer(fake))
        .buffer(bound)
        .service(support::http_service(fake).boxed_clone())
        .boxed_clone()
}

/// `svc.ready().await?.call(req)` on `callers` clones at once, each keeping its service
/// borrowed until its response arrives.
async fn ready_call(client: &support::Client2, fake: &FakePatchworks, callers: usize) {
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (mut client, uri) = (client.clone(), fake.uri("/api/v1/flows"));
            tokio::spawn(async move {
                let ready = client.ready().await?;
                let response = ready.call(get(uri)).await?;
                Ok::<_, BoxError>(response.status())
            })
        })
        .collect();
    for task in tasks {
        let status = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stalled: readiness held across the login")
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn ready_call_with_a_concurrency_limit_or_buffer_below_does_not_stall_on_the_login() {
    for (limit, callers) in [(1, 1), (1, 3), (4, 4)] {
        let fake = FakePatchworks::start().await.unwrap();
        ready_call(&limited(&fake, limit), &fake, callers).await;
        assert_eq!(fake.logins(), 1);

        let fake = FakePatchworks::start().await.unwrap();
        ready_call(&buffered(&fake, limit), &fake, callers).await;
        assert_eq!(fake.logins(), 1);
    }
    // And with `oneshot`, which gives the service up with the call.
    let fake = FakePatchworks::start().await.unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        limited(&fake, 1).oneshot(get(fake.uri("/api/v1/flows"))),
    )
    .await
    .expect("stalled");
    assert_eq!(response.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn ready_call_after_a_revocation_with_a_limit_of_one_recovers() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = limited(&fake, 1);
    ready_call(&client, &fake, 1).await;
    fake.revoke_tokens();
    ready_call(&client, &fake, 2).await;
    assert_eq!(fake.logins(), 2);
}

// 4. Tokens outlive the runtime that logged in.

/// A fake Patchworks on a runtime of its own, on its own threads, for tests that make and drop
/// runtimes of their own.
fn fake_on_its_own_runtime() -> (tokio::runtime::Runtime, FakePatchworks) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = runtime.block_on(FakePatchworks::start()).unwrap();
    (runtime, fake)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_runtime_per_call_logs_in_once() {
    let (_server, fake) = fake_on_its_own_runtime();
    let layer = layer(&fake);
    for _ in 0..20 {
        // A sync facade: a runtime and a client per call, the layer kept.
        let status = current_thread().block_on(async {
            let client = layer.layer(fake.client());
            client.oneshot(get(fake.uri("/api/v1/flows"))).await
        });
        assert_eq!(status.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(fake.logins(), 1);
}

#[test]
fn a_waiter_whose_login_died_with_its_runtime_logs_in_itself() {
    let (_server, fake) = fake_on_its_own_runtime();
    let layer = layer(&fake);
    fake.hold_logins();

    // Runtime A starts the login, which the fake holds.
    let a = current_thread();
    let first = a.spawn({
        let client = layer.layer(fake.client());
        let request = get(fake.uri("/api/v1/flows"));
        async move { client.oneshot(request).await }
    });
    a.block_on(async {
        support::until_real("the login reaches the fake", || fake.logins() == 1).await
    });

    // Runtime B waits on that login.
    let b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let second = b.spawn({
        let client = layer.layer(fake.client());
        let request = get(fake.uri("/api/v1/flows"));
        async move { client.oneshot(request).await }
    });
    b.block_on(support::until_real("B waits on A's login", || {
        layer.state().waiting == 1
    }));
    assert_eq!(layer.state().most_waiting, 0, "the login has not answered");

    drop(first);
    drop(a); // the login dies with its runtime
    fake.release_logins();
    let response = b.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the waiter stalled")
            .unwrap()
    });
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(fake.logins(), 2);
}

#[test]
fn an_idle_runtime_never_sends_an_expired_token_even_for_a_body_it_cannot_replay() {
    let (_server, fake) = fake_on_its_own_runtime();
    // The shortest lifetime the layer accepts: 1 s, so a send margin of 100 ms.
    fake.set_token_lifetime(Duration::from_secs(1));
    let runtime = current_thread();
    let client = layer(&fake).layer(fake.client());
    let ok = runtime.block_on(client.clone().oneshot(get(fake.uri("/api/v1/flows"))));
    assert_eq!(ok.unwrap().status(), StatusCode::OK);

    // The runtime is not driven across the token's expiry: its timers cannot run.
    std::thread::sleep(Duration::from_millis(1300));

    let big = Request::post(fake.uri("/api/v1/flows"))
        .body(Full::new(Bytes::from(vec![b'x'; 100 * 1024])))
        .unwrap();
    let response = runtime.block_on(client.oneshot(big)).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.expired_tokens_seen(), 0);
    assert_eq!(fake.logins(), 2);
}

// 5. Smaller holes.

#[tokio::test]
async fn a_login_answered_with_a_redirect_is_refused_and_the_password_does_not_follow() {
    let fake = FakePatchworks::start().await.unwrap();
    let elsewhere = FakePatchworks::start().await.unwrap();
    let target = elsewhere.login_url().to_string();
    fake.queue_login_answers([LoginAnswer::Redirect(target.clone())]);

    // A plain client does not follow: the layer sees the 307.
    let client = client(&fake);
    let error = layer_error(&client, &fake, "/api/v1/flows").await;
    assert_eq!(
        error.status(),
        Some(StatusCode::TEMPORARY_REDIRECT),
        "{error}"
    );
    assert!(!error.is_transport());

    // `FollowRedirect` placed inside the layer by mistake, with a policy that replays bodies:
    // the token that comes back from another origin is refused.
    let fake = FakePatchworks::start().await.unwrap();
    fake.queue_login_answers([LoginAnswer::Redirect(target)]);
    let policy =
        tower_http::follow_redirect::policy::clone_body_fn(|body: &Full<Bytes>| Some(body.clone()));
    let client = ServiceBuilder::new()
        .layer(layer(&fake))
        .layer(tower_http::follow_redirect::FollowRedirectLayer::with_policy(policy))
        .service(fake.client());
    let error = client
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap_err();
    let error = auth_error(&error);
    assert!(error.to_string().contains("redirect"), "{error}");
    assert_eq!(fake.api_calls(), 0, "no token from another origin was used");
}

/// A service that records the `Authorization` of what it is sent and answers 200.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<Option<http::HeaderValue>>>>);

impl Service<Request<Full<Bytes>>> for Recorder {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        self.0
            .lock()
            .unwrap()
            .push(request.headers().get(AUTHORIZATION).cloned());
        let body = if request.uri().path() == patchworks_auth::test_util::LOGIN_PATH {
            r#"{"token":"abc.def.ghi","expires_in":86400}"#
        } else {
            "{}"
        };
        std::future::ready(Ok(Response::new(Full::new(Bytes::from(body)))))
    }
}

#[tokio::test]
async fn network_path_references_and_asterisk_get_no_token_and_cause_no_login() {
    let recorder = Recorder::default();
    let client = AuthLayer::new(Credentials::new("ops@example.com", "pw")).layer(recorder.clone());
    for uri in ["//evil.example/api/v1/flows", "*"] {
        let request = Request::builder()
            .uri(uri)
            .body(Full::<Bytes>::default())
            .unwrap();
        assert_eq!(
            client.clone().oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(*recorder.0.lock().unwrap(), vec![None, None]);
    assert_eq!(client.state().logins, 0);
}

#[tokio::test]
async fn a_login_url_with_userinfo_is_refused_and_never_printed() {
    let secret = "s3cr3t-in-url";
    let url: http::Uri = format!("https://ops:{secret}@svc-fabric.pwks.co/api/v1/login")
        .parse()
        .unwrap();
    let layer = AuthLayer::new(Credentials::new("ops@example.com", "pw")).login_url(url);
    let recorder = Recorder::default();
    let client = layer.layer(recorder.clone());
    let error = client
        .clone()
        .oneshot(get("https://core.wearepatchworks.com/api/v1/flows"
            .parse()
            .unwrap()))
        .await
        .unwrap_err();
    let error = auth_error(&error);
    assert!(error.is_config());
    for text in [
        format!("{layer:?}"),
        format!("{client:?}"),
        format!("{error}"),
        format!("{error:?}"),
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(recorder.0.lock().unwrap().is_empty(), "refused without I/O");
}

#[tokio::test]
async fn the_fakes_debug_hides_its_password_and_tokens() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    let token = support::last_api_authorization(&fake).unwrap();
    let token = token.strip_prefix("Bearer ").unwrap();
    let debug = format!("{fake:?}");
    assert!(
        !debug.contains(patchworks_auth::test_util::PASSWORD),
        "{debug}"
    );
    assert!(!debug.contains(token), "{debug}");
}

/// Drives `future` to its end on the runtime, then polls it once more: that must panic, with
/// one message.
async fn completes_then_panics_when_polled_again<F: std::future::Future>(future: F) {
    let mut future = std::pin::pin!(future);
    let _ = std::future::poll_fn(|cx| future.as_mut().poll(cx)).await;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = future.as_mut().poll(&mut cx);
    }));
    let message = again.expect_err("a second poll must panic");
    let message = message
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| message.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        message.contains("ResponseFuture polled after completion"),
        "{message}"
    );
}

/// Every state a `ResponseFuture` passes through or ends in: passed through, slow (waiting for
/// a login, or for a unit of the budget), sent (warm), buffering a body, failed; each then
/// `Done`, where a poll panics. (A 401's recovery is slow too.)
#[tokio::test]
async fn a_response_future_polled_after_completion_panics_the_same_way_in_every_state() {
    let get = |uri: &str| Request::get(uri).body(Full::<Bytes>::default()).unwrap();
    let mut client =
        AuthLayer::new(Credentials::new("ops@example.com", "pw")).layer(Recorder::default());
    // Passed through: another origin.
    completes_then_panics_when_polled_again(client.call(get("https://example.com/"))).await;
    // Slow: waiting for the login, then sent with the token.
    completes_then_panics_when_polled_again(
        client.call(get("https://core.wearepatchworks.com/api/v1/flows")),
    )
    .await;
    // Warm.
    completes_then_panics_when_polled_again(
        client.call(get("https://core.wearepatchworks.com/api/v1/flows")),
    )
    .await;
    // Buffering a body kept for a replay, then sent.
    let post = Request::post("https://core.wearepatchworks.com/api/v1/orders")
        .body(Full::from("{}"))
        .unwrap();
    completes_then_panics_when_polled_again(client.call(post)).await;
    // Slow under an API budget: waiting for its token, then its unit.
    let mut budgeted = AuthLayer::new(Credentials::new("ops@example.com", "pw"))
        .budget(patchworks_auth::budget::Budget::per_minute(240))
        .layer(Recorder::default());
    completes_then_panics_when_polled_again(
        budgeted.call(get("https://core.wearepatchworks.com/api/v1/flows")),
    )
    .await;
    // Failed: a refused configuration.
    let mut refused = AuthLayer::new(Credentials::new("ops@example.com", "pw"))
        .login_url("http://10.0.0.1/login".parse().unwrap())
        .layer(Recorder::default());
    completes_then_panics_when_polled_again(
        refused.call(get("https://core.wearepatchworks.com/api/v1/flows")),
    )
    .await;
}
