//! The token core's promises through real HTTP on loopback: slow but healthy logins succeed, a
//! renewal abandoned with its runtime is taken up before the token expires, a storm of 401s
//! costs a bounded number of logins, and the tower layer and the reqwest middleware give the
//! same answer in the same situation.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{Full, StreamBody};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{
    body::Body,
    reqwest::AuthMiddleware,
    test_util::{hold_clock, FakePatchworks, LoginAnswer},
    AuthLayer, Credentials,
};
use reqwest_middleware::ClientBuilder;
use std::time::Duration;
use support::*;
use tower::{Layer, ServiceExt};

// 1. Slow but healthy logins.

#[tokio::test]
async fn a_login_slower_than_a_third_of_the_timeout_succeeds() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_login_delay(Duration::from_millis(1500));
    let client = layer(&fake)
        .login_timeout(Duration::from_secs(3))
        .layer(fake.client());
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    // One attempt, and a hedge beside it after a third of the timeout at most.
    assert!((1..=2).contains(&fake.logins()), "{}", fake.logins());
    assert_eq!(client.state().logins, 1, "one login");
}

#[tokio::test]
async fn twenty_callers_on_a_slow_login_all_get_its_token() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_login_delay(Duration::from_millis(2500));
    let client = layer(&fake)
        .login_timeout(Duration::from_secs(4))
        .layer(fake.client());
    let statuses = concurrent_gets(&client, &fake, 20).await;
    assert_all_ok(&statuses);
    assert!((1..=2).contains(&fake.logins()), "{}", fake.logins());
    assert_eq!(fake.expired_tokens_seen() + fake.unauthorized(), 0);
}

#[tokio::test]
async fn a_login_out_of_time_says_how_many_attempts_ran_and_how_long_the_slowest_waited() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_login_answer(LoginAnswer::Hang);
    let client = layer(&fake)
        .login_timeout(Duration::from_millis(900))
        .layer(fake.client());
    let error = layer_error(&client, &fake, "/api/v1/flows").await;
    assert!(error.is_timeout(), "{error}");
    let message = error.to_string();
    assert!(message.contains("2 attempts"), "{message}");
    assert!(message.contains("the slowest waited 9"), "{message}");
    assert_eq!(fake.logins(), 2, "one attempt and its hedge, neither cut");
}

// 2. A runtime per call.

/// A sync facade: every call runs on a runtime of its own, dropped when the call returns. A
/// renewal started by one call dies with its runtime; the next call takes it up and waits for
/// it, so the token is renewed while the old one is still good and nobody waits for a cold
/// login.
#[test]
fn with_a_runtime_per_call_an_abandoned_renewal_is_taken_up_before_the_token_expires() {
    let server = tokio::runtime::Runtime::new().unwrap();
    let fake = server.block_on(FakePatchworks::start()).unwrap();
    // In real time, since each call's runtime has a clock of its own. Renewal is due after 3 s
    // (half the lifetime) and the token is sent until 5.4 s: 2.4 s for the calls below, however
    // busy the machine.
    let lifetime = Duration::from_secs(6);
    fake.set_token_lifetime(lifetime);
    let client = layer(&fake).layer(fake.client());
    let call = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(status(&client, &fake, "/api/v1/flows"))
    };
    assert_eq!(call(), StatusCode::OK);
    let first = client.state();
    let (obtained_at, expires_at) = (first.obtained_at.unwrap(), first.expires_at.unwrap());

    // Into the renewal window: the time this test is about.
    sleep_until(obtained_at + lifetime / 2 + Duration::from_millis(100));
    // The fake holds the renewal until the call that starts it has returned and its runtime
    // has gone; the renewed token lives long.
    fake.hold_logins();
    fake.set_token_lifetime(Duration::from_secs(600));
    assert_eq!(
        call(),
        StatusCode::OK,
        "starts the renewal, then its runtime goes"
    );
    // Whether the renewal's request left before its runtime went is the machine's timing (a
    // busy run of the whole suite once dropped it first): either way the renewal is abandoned
    // with the runtime, and the next call takes it up.
    assert!(fake.logins() <= 2, "at most the renewal reached the fake");
    fake.release_logins();
    assert_eq!(
        call(),
        StatusCode::OK,
        "takes the renewal up and waits for it"
    );
    let state = client.state();
    assert!(
        state.obtained_at.unwrap() > obtained_at,
        "renewed: {state:?}"
    );

    // Past the first token's expiry: the renewed token is there, no login to wait for.
    sleep_until(expires_at + Duration::from_millis(100));
    assert!(client.state().usable);
    let logins = fake.logins();
    assert_eq!(call(), StatusCode::OK);
    assert_eq!(fake.logins(), logins, "no cold login");
    assert_eq!(fake.expired_tokens_seen() + fake.unauthorized(), 0);
}

/// Sleeps this thread until `deadline`.
fn sleep_until(deadline: std::time::Instant) {
    std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
}

// 3. A storm of 401s.

/// A crawler over resources the account may not see: each path answers a bare 401, with 200s
/// from a path the account may use between them. The first 401 costs a login (it could have
/// been a revocation); after that, 401s cost at most one login in any 10 s.
#[tokio::test(start_paused = true)]
async fn distinct_paths_answering_401_between_200s_cost_one_login_per_ten_seconds() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.forbid("/api/v1/private/*", None);
    let client = client(&fake);
    let crawl = |from: usize, to: usize| {
        let (client, fake) = (&client, &fake);
        hold_clock(async move {
            for i in from..to {
                let path = format!("/api/v1/private/{i}");
                expect_status(client, fake, &path, StatusCode::UNAUTHORIZED).await;
                expect_status(client, fake, "/api/v1/flows", StatusCode::OK).await;
            }
        })
    };
    let flows = || {
        fake.seen()
            .iter()
            .filter(|s| s.path == "/api/v1/flows")
            .count()
    };
    crawl(0, 2_000).await;
    assert_eq!(fake.logins(), 2, "the first login, and the first 401's");
    // Within the cool-down the bare 401s are settled by checks of the token (GET /flows, which
    // answered it): at most one a second, and the clock stood still.
    let checks = flows() - 2_000;
    assert!(checks <= 1, "{checks} checks");
    for round in 1..=3 {
        tokio::time::advance(Duration::from_secs(10)).await;
        crawl(round * 2_000, round * 2_000 + 100).await;
        assert!(
            fake.logins() <= 2 + round,
            "round {round}: {}",
            fake.logins()
        );
        let checks = flows() - 2_000 - 100 * round;
        assert!(checks <= 1 + round, "round {round}: {checks} checks");
    }

    // A revocation among them is recovered, at the cost of one login.
    let logins = fake.logins();
    fake.revoke_tokens();
    flows_ok(&client, &fake).await;
    assert_eq!(fake.logins(), logins + 1);
}

// 4. One table of situations, through both adapters.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Payload {
    Nothing,
    /// A body the layer keeps for a replay.
    Json,
    /// A streamed body: sent once, never replayed.
    Stream,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Status(StatusCode),
    Rejected,
    Other(String),
}

struct Situation {
    name: &'static str,
    /// After one warm-up request (unless `cold`).
    setup: fn(&FakePatchworks),
    cold: bool,
    /// Before `setup`: the token's background renewal is rejected, so logins fail fast.
    renewal_rejected: bool,
    method: Method,
    path: &'static str,
    payload: Payload,
    expect: Outcome,
    logins: usize,
}

fn situations() -> Vec<Situation> {
    use Payload::*;
    let revoke: fn(&FakePatchworks) = |fake| fake.revoke_tokens();
    let scope: fn(&FakePatchworks) = |fake| {
        fake.forbid(
            "/api/v1/admin",
            Some(r#"Bearer error="insufficient_scope""#),
        );
    };
    let revoke_and_reject: fn(&FakePatchworks) = |fake| {
        fake.set_login_answer(LoginAnswer::Status(StatusCode::UNAUTHORIZED));
        fake.revoke_tokens();
    };
    let (ok, unauthorized) = (StatusCode::OK, StatusCode::UNAUTHORIZED);
    let (get, post, flows) = (Method::GET, Method::POST, "/api/v1/flows");
    // (name, setup, renewal rejected first, method, path, payload, outcome, logins)
    let rows = [
        (
            "fresh token",
            (|_| {}) as fn(&_),
            false,
            &get,
            flows,
            Nothing,
            Ok(ok),
            1,
        ),
        (
            "revoked, GET",
            revoke,
            false,
            &get,
            flows,
            Nothing,
            Ok(ok),
            2,
        ),
        (
            "revoked, POST kept",
            revoke,
            false,
            &post,
            flows,
            Json,
            Ok(ok),
            2,
        ),
        (
            "revoked, POST streamed",
            revoke,
            false,
            &post,
            flows,
            Stream,
            Ok(unauthorized),
            2,
        ),
        (
            "insufficient_scope",
            scope,
            false,
            &get,
            "/api/v1/admin",
            Nothing,
            Ok(unauthorized),
            1,
        ),
        (
            "revoked, login rejected, POST kept",
            revoke_and_reject,
            false,
            &post,
            flows,
            Json,
            Err(()),
            2,
        ),
        (
            "revoked, login rejected, POST streamed",
            revoke_and_reject,
            false,
            &post,
            flows,
            Stream,
            Ok(unauthorized),
            2,
        ),
        (
            "renewal rejected, then revoked, POST kept",
            revoke,
            true,
            &post,
            flows,
            Json,
            Err(()),
            2,
        ),
        (
            "renewal rejected, then revoked, POST streamed",
            revoke,
            true,
            &post,
            flows,
            Stream,
            Ok(unauthorized),
            2,
        ),
    ];
    let mut situations: Vec<_> = rows
        .into_iter()
        .map(
            |(name, setup, renewal_rejected, method, path, payload, outcome, logins)| Situation {
                name,
                setup,
                cold: false,
                renewal_rejected,
                method: method.clone(),
                path,
                payload,
                expect: outcome.map_or(Outcome::Rejected, Outcome::Status),
                logins,
            },
        )
        .collect();
    situations.push(Situation {
        name: "rejected credentials",
        setup: |_| {},
        cold: true,
        renewal_rejected: false,
        method: Method::GET,
        path: flows,
        payload: Nothing,
        expect: Outcome::Rejected,
        logins: 1,
    });
    situations
}

/// Lets the token (2 s) reach its renewal window on the paused clock, and has its background
/// renewal rejected: the next login fails fast. Waits for the rejection through `watch`.
async fn reject_the_renewal(
    fake: &FakePatchworks,
    watch: &mut tokio::sync::watch::Receiver<patchworks_auth::TokenState>,
    send_get: impl std::future::Future<Output = StatusCode>,
) {
    // Due for renewal after half of its 2 s: the time this is about.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.set_login_answer(LoginAnswer::Status(StatusCode::UNAUTHORIZED));
    assert_eq!(
        hold_clock(send_get).await,
        StatusCode::OK,
        "sent with the token while it renews"
    );
    hold_clock(watch.wait_for(|state| state.last_error.is_some()))
        .await
        .unwrap();
}

fn outcome_of(error: &(dyn std::error::Error + 'static)) -> Outcome {
    match error.downcast_ref::<patchworks_auth::Error>() {
        Some(error) if error.is_rejected() => Outcome::Rejected,
        _ => Outcome::Other(error.to_string()),
    }
}

async fn through_tower(fake: &FakePatchworks, s: &Situation, layer: AuthLayer) -> Outcome {
    let mut watch = layer.watch();
    let client = layer.layer(Client::builder(TokioExecutor::new()).build_http::<Body>());
    let send = |request: Request<Body>| client.clone().oneshot(request);
    let request = |method: Method, path, payload| {
        let body = match payload {
            Payload::Nothing => Body::from(Bytes::new()),
            Payload::Json => Body::new(Full::new(Bytes::from_static(b"{}"))),
            Payload::Stream => Body::new(StreamBody::new(futures_util::stream::iter([Ok::<
                _,
                std::io::Error,
            >(
                hyper::body::Frame::data(Bytes::from_static(b"{}")),
            )]))),
        };
        Request::builder()
            .method(method)
            .uri(fake.uri(path))
            .body(body)
            .unwrap()
    };
    let get = || async { send(request(Method::GET, "/api/v1/flows", Payload::Nothing)).await };
    if !s.cold {
        assert_eq!(hold_clock(get()).await.unwrap().status(), StatusCode::OK);
    }
    if s.renewal_rejected {
        reject_the_renewal(fake, &mut watch, async { get().await.unwrap().status() }).await;
    }
    (s.setup)(fake);
    match hold_clock(send(request(s.method.clone(), s.path, s.payload))).await {
        Ok(response) => Outcome::Status(response.status()),
        Err(error) => outcome_of(&*error),
    }
}

async fn through_reqwest(fake: &FakePatchworks, s: &Situation, layer: AuthLayer) -> Outcome {
    let mut watch = layer.watch();
    let reqwest = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let middleware = AuthMiddleware::new(layer, reqwest.clone());
    let client = ClientBuilder::new(reqwest).with(middleware).build();
    let request = |method: Method, path, payload| {
        let builder = client.request(method, fake.uri(path).to_string());
        match payload {
            Payload::Nothing => builder,
            Payload::Json => builder.body("{}"),
            Payload::Stream => {
                builder.body(reqwest::Body::wrap_stream(futures_util::stream::iter([
                    Ok::<_, std::io::Error>("{}"),
                ])))
            }
        }
    };
    let get = || async {
        let response = request(Method::GET, "/api/v1/flows", Payload::Nothing).send();
        response.await.unwrap().status()
    };
    if !s.cold {
        assert_eq!(hold_clock(get()).await, StatusCode::OK);
    }
    if s.renewal_rejected {
        reject_the_renewal(fake, &mut watch, get()).await;
    }
    (s.setup)(fake);
    match hold_clock(request(s.method.clone(), s.path, s.payload).send()).await {
        Ok(response) => Outcome::Status(response.status()),
        Err(reqwest_middleware::Error::Middleware(error)) => outcome_of(error.as_ref()),
        Err(error) => Outcome::Other(error.to_string()),
    }
}

/// On a paused clock: requests run in `hold_clock`, time moves only by the renewal's sleep.
#[tokio::test(start_paused = true)]
async fn the_same_situation_gets_the_same_answer_through_tower_and_reqwest() {
    for situation in situations() {
        for via in ["tower", "reqwest"] {
            let fake = FakePatchworks::start().await.unwrap();
            if situation.renewal_rejected {
                fake.set_token_lifetime(Duration::from_secs(2));
            }
            let credentials = if situation.cold && situation.expect == Outcome::Rejected {
                Credentials::new("ops@example.com", "wrong")
            } else {
                fake.credentials()
            };
            let layer = AuthLayer::new(credentials).login_url(fake.login_url());
            let outcome = match via {
                "tower" => through_tower(&fake, &situation, layer).await,
                _ => through_reqwest(&fake, &situation, layer).await,
            };
            let name = situation.name;
            assert_eq!(outcome, situation.expect, "{name}, through {via}");
            assert_eq!(
                fake.logins(),
                situation.logins,
                "{name}: logins through {via}"
            );
        }
    }
}
