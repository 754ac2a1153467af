//! One API budget per account (`patchworks_auth::budget`): in one process, and across a fleet
//! of real OS processes (copies of this test binary) sharing a real `redis-server` or a file,
//! against a fake Patchworks that enforces a sliding-window rate limit and answers 429 beyond it.

#[path = "support/fleet.rs"]
mod fleet;
mod support;

use bytes::Bytes;
use fleet::{total, Member, Redis, Report, Spec, TempDir};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{budget::Budget, test_util::FakePatchworks, AuthLayer};
use std::{path::PathBuf, time::Duration};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const WITHIN: Duration = Duration::from_secs(60);

/// What a member runs: this binary, its one ignored test.
#[test]
#[ignore = "run by the budget tests as a member process"]
fn budget_member() {
    assert!(
        fleet::run_member_if_asked(),
        "run by the budget tests, with {} set",
        fleet::MEMBER_VAR
    );
}

const MEMBER_ARGS: &[&str] = &["--ignored", "--exact", "budget_member", "--nocapture", "-q"];

/// One scenario at a time: each has the machine's two cores to itself.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

type Authed = support::Client;

fn client(fake: &FakePatchworks, budget: Budget) -> Authed {
    support::layer(fake).budget(budget).layer(fake.client())
}

fn get(fake: &FakePatchworks, path: &str) -> Request<Full<Bytes>> {
    Request::get(fake.uri(path)).body(Full::default()).unwrap()
}

/// `GET /api/v1/flows` fails with the layer's own error: that error.
async fn layer_error(client: &Authed, fake: &FakePatchworks) -> patchworks_auth::Error {
    let error = client
        .clone()
        .oneshot(get(fake, "/api/v1/flows"))
        .await
        .unwrap_err();
    *error.downcast::<patchworks_auth::Error>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_keep_within_the_budget() {
    let _one = one_at_a_time().await;
    let fake = FakePatchworks::start().await.unwrap();
    let (limit, per) = (200, Duration::from_secs(1));
    fake.limit_rate(limit, per);
    let client = client(&fake, Budget::new(limit as u32, per));
    let statuses = support::concurrent_gets(&client, &fake, 1000).await;
    support::assert_all_ok(&statuses);
    assert_eq!(fake.too_many(), 0, "no 429");
    assert_eq!(fake.api_calls(), 1000);
    // The share of the budget used is a figure, not a promise a busy machine can keep: told
    // here, measured in BENCHMARKS.md ("The budget's share") with `cargo run --example fleet`.
    let share = fleet::share(&fake, limit, per);
    eprintln!("{:.0}% of the budget used", share * 100.0);
    let state = client.budget_state();
    assert!(state.waited >= 700, "{state:?}");
    assert!(state.longest_wait >= Duration::from_secs(3), "{state:?}");
}

/// A cold burst: the requests wait for the login without holding a unit, so the login is sent
/// first, at once, and the requests take their units as they are sent (issue 26: the login used
/// to wait a whole window behind units the requests took before it, and they failed with a
/// login timeout).
#[tokio::test(start_paused = true)]
async fn a_cold_burst_over_the_budget_sends_the_login_first_and_answers_every_request() {
    use patchworks_auth::test_util::hold_clock;
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    let (limit, per) = (10, Duration::from_secs(2));
    fake.limit_rate(limit, per);
    let budget = Budget::new(limit as u32, per).max_wait(Duration::from_secs(60));
    let client = client(&fake, budget);
    // All 15 are called before the login's task can run (one thread): every request is there
    // before the login asks for its unit.
    let requests: Vec<_> = (0..15)
        .map(|i| {
            let request = get(&fake, &format!("/api/v1/flows/{i}"));
            tokio::spawn(client.clone().oneshot(request))
        })
        .collect();
    // The promise is about time, on the paused clock held still: the login goes at once, and
    // the nine requests its unit leaves room for with it, not a window (2 s) later.
    hold_clock(support::until("the login and nine requests", || {
        fake.api_calls() == 9
    }))
    .await;
    assert_eq!(fake.logins(), 1);
    let seen = fake.seen();
    assert_eq!(
        seen[0].path,
        patchworks_auth::test_util::LOGIN_PATH,
        "the login first"
    );
    // The other six a window later (and the margin a unit is kept for its answer's transit).
    tokio::time::sleep(per + Duration::from_millis(300)).await;
    for request in requests {
        let response = hold_clock(request).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!((fake.logins(), fake.api_calls()), (1, 15));
    assert_eq!(fake.too_many(), 0, "no 429");
}

/// A renewal while the window is full and requests are queued for it: the renewal's login goes
/// ahead of the queue, and no request fails (issue 26: 80 of 118 failed with a login timeout
/// when the login waited behind them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_under_a_saturated_budget_fails_no_request() {
    let _one = one_at_a_time().await;
    let fake = FakePatchworks::start().await.unwrap();
    let (limit, per) = (10, Duration::from_secs(1));
    fake.limit_rate(limit, per);
    // Renewed from half-way through its 4 s: the queue below is never empty then.
    fake.set_token_lifetime(Duration::from_secs(4));
    let client = support::layer(&fake)
        .refresh_before(Duration::from_secs(3))
        .budget(Budget::new(limit as u32, per))
        .layer(fake.client());
    let statuses = support::concurrent_gets(&client, &fake, 60).await;
    support::assert_all_ok(&statuses);
    assert!(fake.logins() >= 2, "{} logins: no renewal", fake.logins());
    // The renewal went ahead of the queue: sent before the first token expired.
    let logins = support::login_times(&fake);
    let renewed_after = logins[1] - logins[0];
    assert!(
        renewed_after < Duration::from_secs(4),
        "renewed after {renewed_after:?}"
    );
    assert_eq!(fake.api_calls(), 60);
    assert_eq!((fake.too_many(), fake.unauthorized()), (0, 0));
}

/// A budget of one unit a window: the login takes the first, each request one after it. On a
/// paused clock, held still while the requests are on the wire, and without a margin for their
/// transit: each unit ages out exactly a window after it was taken.
#[tokio::test(start_paused = true)]
async fn a_budget_of_one_sends_the_login_at_once_then_one_request_a_window() {
    use patchworks_auth::test_util::hold_clock;
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    let window = Duration::from_millis(500);
    let budget = Budget::new(1, window)
        .margin(Duration::ZERO)
        .max_wait(Duration::from_secs(30));
    let client = client(&fake, budget);
    let requests: Vec<_> = (0..2)
        .map(|i| tokio::spawn(client.clone().oneshot(get(&fake, &format!("/api/v1/{i}")))))
        .collect();
    hold_clock(support::until("the login", || fake.logins() == 1)).await;
    let (start, moment) = (Instant::now(), Duration::from_millis(10));
    for sent in 1..=2 {
        // Not a moment before its window, and at once after it.
        tokio::time::sleep_until(start + window * sent - moment).await;
        assert_eq!(fake.api_calls(), sent as usize - 1, "sent within a window");
        tokio::time::sleep_until(start + window * sent + moment).await;
        hold_clock(support::until("the next request", || {
            fake.api_calls() == sent as usize
        }))
        .await;
    }
    for request in requests {
        let response = hold_clock(request).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let seen = fake.seen();
    assert_eq!(
        seen[0].path,
        patchworks_auth::test_util::LOGIN_PATH,
        "the login first"
    );
    for pair in seen.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(gap >= window, "{gap:?} between sends");
    }
}

#[tokio::test]
async fn waiters_go_in_arrival_order_and_one_that_gives_up_gives_its_turn_back() {
    let fake = FakePatchworks::start().await.unwrap();
    // The login and the first request take the window's two units.
    let budget = Budget::new(2, Duration::from_millis(400)).margin(Duration::ZERO);
    let client = client(&fake, budget);
    client
        .clone()
        .oneshot(get(&fake, "/api/v1/0"))
        .await
        .unwrap();
    let mut waiting = Vec::new();
    for i in 1..=5 {
        waiting.push(tokio::spawn(
            client.clone().oneshot(get(&fake, &format!("/api/v1/{i}"))),
        ));
        // In line (or already served) before the next arrives.
        let arrived = || client.budget_state().queued + fake.api_calls() - 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while arrived() < i {
            assert!(Instant::now() < deadline, "request {i} never queued");
            tokio::task::yield_now().await;
        }
    }
    waiting.remove(1).abort(); // the second in line gives up
    for request in waiting {
        assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    let paths: Vec<String> = fake.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths[1..],
        [
            "/api/v1/0",
            "/api/v1/1",
            "/api/v1/3",
            "/api/v1/4",
            "/api/v1/5"
        ],
        "in arrival order, and the one that gave up never sent"
    );
}

#[tokio::test]
async fn a_request_past_max_wait_fails_unsent_with_a_typed_error() {
    let fake = FakePatchworks::start().await.unwrap();
    let budget = Budget::new(2, Duration::from_secs(60)).max_wait(Duration::from_millis(100));
    let client = client(&fake, budget);
    client
        .clone()
        .oneshot(get(&fake, "/api/v1/flows"))
        .await
        .unwrap();
    let error = layer_error(&client, &fake).await;
    assert!(error.is_budget_exhausted(), "{error}");
    assert!(error.to_string().contains("max_wait"), "{error}");
    // Refused after its `max_wait` (0.1 s), not when a unit frees (60 s): what the error says
    // it waited, and what the budget counted.
    assert!(error.to_string().contains("within 100ms"), "{error}");
    assert_eq!(fake.api_calls(), 1, "never sent");
    assert_eq!(client.budget_state().refused, 1);
}

/// On a paused clock: the request after a 429 is not sent before its `Retry-After` (2 s) has
/// passed, and is sent once it has, well short of the budget's `max_wait` (30 s).
#[tokio::test(start_paused = true)]
async fn a_429_pauses_the_budget_for_its_retry_after_and_is_returned_as_it_is() {
    use patchworks_auth::test_util::hold_clock;
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    let client = client(&fake, Budget::per_minute(240));
    let send = || client.clone().oneshot(get(&fake, "/api/v1/flows"));
    assert_eq!(hold_clock(send()).await.unwrap().status(), StatusCode::OK);
    fake.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(2));
    let response = hold_clock(send()).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "returned as it is"
    );
    let paused = tokio::spawn(send());
    tokio::time::sleep(Duration::from_millis(1990)).await;
    assert!(!paused.is_finished(), "sent during the pause");
    assert_eq!(fake.api_calls(), 2, "sent during the pause");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let response = hold_clock(paused).await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "sent once the pause ended"
    );
    assert_eq!(client.budget_state().pauses, 1);
}

#[tokio::test]
async fn requests_to_other_origins_take_no_unit() {
    let fake = FakePatchworks::start().await.unwrap();
    let elsewhere = FakePatchworks::start().await.unwrap();
    let budget = Budget::new(2, Duration::from_secs(60)).max_wait(Duration::from_millis(50));
    let client = client(&fake, budget);
    client
        .clone()
        .oneshot(get(&fake, "/api/v1/flows"))
        .await
        .unwrap();
    for _ in 0..10 {
        let response = client
            .clone()
            .oneshot(get(&elsewhere, "/api/v1/flows"))
            .await;
        assert_eq!(
            response.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "no token sent there"
        );
    }
    assert_eq!(client.budget_state().refused, 0);
}

// A fleet: 8 processes, each sending 50 requests one after the other as fast as it can, under
// `Budget::new(100, 2 s)`, against a fake that allows 100 requests in any 2 s.

const FLEET: usize = 8;

fn exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

fn spec(fake: &FakePatchworks, store: String, requests: Option<u64>) -> Spec {
    Spec {
        interval_ms: 0,
        login_timeout_ms: 10_000,
        budget: Some((100, 2_000)),
        ..Spec::against(fake, store, requests)
    }
}

fn spawn(spec: &Spec, n: usize) -> Vec<Member> {
    (0..n)
        .map(|_| Member::spawn(&exe(), MEMBER_ARGS, spec))
        .collect()
}

async fn finish(members: Vec<Member>) -> Vec<Report> {
    tokio::task::spawn_blocking(|| members.into_iter().map(|m| m.finish(WITHIN)).collect())
        .await
        .unwrap()
}

async fn eight_processes_keep_within_the_budget(store: String, fake: FakePatchworks) {
    fake.limit_rate(100, Duration::from_secs(2));
    let reports = finish(spawn(&spec(&fake, store, Some(50)), FLEET)).await;
    let sum = total(&reports);
    assert_eq!(sum.requests, 400);
    assert_eq!(sum.failures, 0, "{reports:?}");
    assert_eq!(fake.too_many(), 0, "no 429");
    // A figure (BENCHMARKS.md, "The budget's share"), not an assertion.
    let share = fleet::share(&fake, 100, Duration::from_secs(2));
    eprintln!("{:.0}% of the budget used", share * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_on_one_redis_keep_within_the_budget() {
    let _one = one_at_a_time().await;
    let Some(redis) = Redis::start() else { return };
    let fake = FakePatchworks::start().await.unwrap();
    eight_processes_keep_within_the_budget(format!("redis:{}", redis.url()), fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_on_one_file_keep_within_the_budget() {
    let _one = one_at_a_time().await;
    let dir = TempDir::new("budget");
    let store = format!("file:{}", dir.0.join("token").display());
    let fake = FakePatchworks::start().await.unwrap();
    eight_processes_keep_within_the_budget(store, fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_429_with_retry_after_pauses_every_process_of_the_fleet() {
    let _one = one_at_a_time().await;
    let Some(redis) = Redis::start() else { return };
    let fake = FakePatchworks::start().await.unwrap();
    let mut spec = spec(&fake, format!("redis:{}", redis.url()), None);
    (spec.budget, spec.interval_ms) = (Some((1000, 2_000)), 50);
    let mut members = spawn(&spec, FLEET);
    for member in &mut members {
        tokio::task::block_in_place(|| member.wait_ready(WITHIN));
    }
    let before = fake.seen().len();
    fake.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(2));
    // Until the 429 was answered, then until every process resumed after its 2 s pause (the
    // time this test is about, as the fake sees it): a request each, at least, after it.
    let failed = || {
        let seen = fake.seen();
        seen[before..]
            .iter()
            .find(|s| s.path == "/api/v1/flows")
            .map(|s| s.received_at)
    };
    fleet::until_within("the 429", WITHIN, || failed().is_some()).await;
    let failed = failed().unwrap();
    fleet::until_within("every process resumed", WITHIN, || {
        let seen = fake.seen();
        let resumed = seen
            .iter()
            .filter(|s| s.received_at > failed + Duration::from_secs(2));
        resumed.count() >= 2 * FLEET
    })
    .await;
    let reports = finish(members).await;

    let seen = fake.seen();
    let during: Vec<Duration> = seen[before..]
        .iter()
        .map(|s| s.received_at.saturating_duration_since(failed))
        .filter(|after| *after > Duration::from_millis(100) && *after < Duration::from_millis(1900))
        .collect();
    assert!(during.is_empty(), "requests during the pause: {during:?}");
    let resumed = seen[before..]
        .iter()
        .filter(|s| s.received_at > failed + Duration::from_secs(2));
    assert!(resumed.count() >= FLEET, "every process resumes");
    assert_eq!(
        total(&reports).failures,
        1,
        "the 429, returned: {reports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_no_request() {
    let _one = one_at_a_time().await;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let fake = FakePatchworks::start().await.unwrap();
    let mut spec = spec(&fake, format!("redis:{}", redis.url()), None);
    (spec.budget, spec.interval_ms) = (Some((1000, 2_000)), 20);
    let mut members = spawn(&spec, 4);
    for member in &mut members {
        tokio::task::block_in_place(|| member.wait_ready(WITHIN));
    }
    // Running (every request takes a unit from Redis), then down: until the fleet sent 50
    // requests a member through the outage.
    let count = || fake.seen().len();
    let running = count();
    fleet::until_within("running", WITHIN, || count() >= running + 4 * 10).await;
    redis.stop();
    let stopped = count();
    fleet::until_within("running on through the outage", WITHIN, || {
        count() >= stopped + 4 * 50
    })
    .await;
    let reports = finish(members).await;
    let sum = total(&reports);
    assert!(sum.requests >= 4 * 60, "{reports:?}");
    assert_eq!(sum.failures, 0, "{reports:?}");
}

/// Two layers on one store, as two processes would be, share one budget: for a login's
/// account, and for an API key, which is never stored but limited the same.
#[tokio::test]
async fn layers_sharing_a_store_share_the_budget_for_logins_and_api_keys() {
    use patchworks_auth::{store::FileStore, Credentials};

    let fake = FakePatchworks::start().await.unwrap();
    fake.accept_api_key("key-1");
    let dir = TempDir::new("shared-budget");
    let budget = Budget::new(2, Duration::from_secs(60)).max_wait(Duration::from_millis(100));
    let accounts = [
        ("login", fake.credentials()),
        ("key", Credentials::api_key("key-1")),
    ];
    for (name, credentials) in accounts {
        let store = FileStore::new(dir.0.join(name).join("token"));
        let layer = || {
            AuthLayer::new(credentials.clone())
                .login_url(fake.login_url())
                .store(store.clone())
                .budget(budget)
                .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        };
        let (first, second) = (layer(), layer());
        // The login and a request, or two requests with the key: the window's two units.
        let sends = if name == "key" { 2 } else { 1 };
        for _ in 0..sends {
            let response = first.clone().oneshot(get(&fake, "/api/v1/flows")).await;
            assert_eq!(response.unwrap().status(), StatusCode::OK, "{name}");
        }
        let error = layer_error(&second, &fake).await;
        assert!(error.is_budget_exhausted(), "{name}: {error}");
    }
    assert_eq!(fake.logins(), 1, "the second layer took the stored token");
}

/// The wait counts (`BudgetState::waited`, the wait histogram) count requests that waited for their
/// turn, not the store's round trips: 40 concurrent requests through a shared budget that is
/// never full each ask the store (one at a time), and none waited for its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_round_trips_are_not_counted_as_waits() {
    use patchworks_auth::store::FileStore;

    let fake = FakePatchworks::start().await.unwrap();
    let dir = TempDir::new("round-trips");
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .store(FileStore::new(dir.0.join("token")))
        .budget(Budget::new(1000, Duration::from_secs(60)))
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let requests =
        (0..40).map(|_| tokio::spawn(client.clone().oneshot(get(&fake, "/api/v1/flows"))));
    for response in futures_util::future::join_all(requests.collect::<Vec<_>>()).await {
        assert_eq!(response.unwrap().unwrap().status(), StatusCode::OK);
    }
    let state = client.budget_state();
    assert_eq!((state.waited, state.refused), (0, 0), "{state:?}");

    // A full window is a wait, and counted.
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .budget(Budget::new(2, Duration::from_millis(500)))
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    for _ in 0..3 {
        let response = client.clone().oneshot(get(&fake, "/api/v1/flows")).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert!(client.budget_state().waited >= 1, "{:?}", client.state());
}

/// A `FileStore`'s budget file after the wall clock stepped back 10 minutes (a full window of
/// units dated ahead), or with a pause recorded an hour ahead: the next request is served at
/// once, not when the host's clock catches up.
#[tokio::test]
async fn a_budget_file_from_a_clock_stepped_back_does_not_block_the_account() {
    use patchworks_auth::store::FileStore;
    use std::time::{SystemTime, UNIX_EPOCH};

    let fake = FakePatchworks::start().await.unwrap();
    let dir = TempDir::new("clock-back");
    let budget = Budget::new(3, Duration::from_secs(2)).max_wait(Duration::from_millis(200));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let micros = |at: Duration| (at.as_micros() as u64).to_be_bytes();
    let ahead = |minutes: u64| now + Duration::from_secs(60 * minutes);
    let (ten_minutes, an_hour) = (micros(ahead(10)), micros(ahead(60)));
    let files = [
        [&[0; 8][..], &ten_minutes, &ten_minutes, &ten_minutes].concat(),
        [&an_hour[..]].concat(),
    ];
    for (i, contents) in files.into_iter().enumerate() {
        let client = AuthLayer::new(fake.credentials())
            .login_url(fake.login_url())
            .store(FileStore::new(dir.0.join(i.to_string()).join("token")))
            .budget(budget)
            .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        client.login().await.unwrap(); // makes the budget's file
        let file = std::fs::read_dir(dir.0.join(i.to_string()))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|e| e == "budget"))
            .expect("the budget's file");
        std::fs::write(&file, [&b"pwb1"[..], &contents].concat()).unwrap();
        let response = client.clone().oneshot(get(&fake, "/api/v1/flows")).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK, "file {i}");
    }
}

/// A frozen store (`redis-server` stopped with SIGSTOP: connections open, no answers) with the
/// budget shared through it: 40 concurrent requests, then more while it stays frozen for 5 s,
/// none refused or failed: after one timeout the process keeps its own budget, and one request
/// a second asks the store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_refuses_and_fails_no_request() {
    use patchworks_auth::store::RedisStore;

    let _one = one_at_a_time().await;
    let Some(redis) = Redis::start() else { return };
    let fake = FakePatchworks::start().await.unwrap();
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .store(RedisStore::new(&redis.url()).unwrap())
        // A limit no round reaches: any refusal is the frozen store's.
        .budget(Budget::new(1_000_000, Duration::from_secs(2)).max_wait(Duration::from_secs(2)))
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    client.login().await.unwrap();
    redis.freeze();
    // Three rounds of 40 while the store answers nothing: each request is sent once the
    // store's time is up, none refused. (How many rounds fit in a second is a figure, not a
    // promise: BENCHMARKS.md.)
    for _ in 0..3 {
        let requests =
            (0..40).map(|_| tokio::spawn(client.clone().oneshot(get(&fake, "/api/v1/flows"))));
        for response in futures_util::future::join_all(requests.collect::<Vec<_>>()).await {
            assert_eq!(response.unwrap().unwrap().status(), StatusCode::OK);
        }
    }
    redis.thaw();
    let state = client.budget_state();
    assert_eq!(state.refused, 0, "{state:?}");
}

/// The measured margin in Redis: a unit whose request was answered ages out sooner, by as much
/// as the layer says, on the server; a unit never sent goes back at once; another process's
/// unit, or one already gone, is left alone.
#[tokio::test]
async fn redis_re_dates_a_unit_once_answered_and_takes_back_one_never_sent() {
    use patchworks_auth::store::{RedisStore, TokenStore};
    let Some(redis) = Redis::start() else { return };
    let store = RedisStore::new(&redis.url()).unwrap();
    let (limit, window) = (2, Duration::from_secs(60));
    let take = async |name: &str| store.take_budget("k", limit, window, name).await.unwrap();
    assert_eq!(take("p-0").await, None);
    assert_eq!(take("p-1").await, None);
    let full = take("p-2").await.expect("the window is full");
    assert!(full > Duration::from_secs(59), "{full:?}");

    // Answered: p-0 ages out 30 s sooner, so a unit is free in about 30 s, not 60.
    store
        .redate_budget("k", "p-0", Duration::from_secs(30))
        .await
        .unwrap();
    let wait = take("p-3").await.expect("still full");
    assert!(
        wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    // Unknown units change nothing.
    store.redate_budget("k", "q-0", window).await.unwrap();
    store.redate_budget("other", "p-1", window).await.unwrap();
    assert!(take("p-4").await.is_some());

    // Never sent: p-1 goes back (re-dated by its whole window), and a unit is free at once.
    store
        .redate_budget("k", "p-1", Duration::MAX)
        .await
        .unwrap();
    assert_eq!(take("p-5").await, None);
    assert!(take("p-6").await.is_some());
}

/// A layer on Redis re-dates its units once answered: a unit of a one-minute window ages out a
/// few milliseconds after the minute, not after the default margin of 3 s (a twentieth).
#[tokio::test]
async fn a_layer_on_redis_dates_its_answered_units_by_their_answers() {
    let Some(redis) = Redis::start() else { return };
    let fake = FakePatchworks::start().await.unwrap();
    let store = patchworks_auth::store::RedisStore::new(&redis.url()).unwrap();
    let client = support::layer(&fake)
        .store(store)
        .budget(Budget::new(10, Duration::from_secs(60)).max_wait(WITHIN))
        .layer(fake.client());
    for _ in 0..3 {
        support::expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    }
    // The login's unit and three requests', each re-dated on a task of its own: each ages out
    // less than 61 s after the last answer (63 s with the default margin).
    let answered = std::time::Instant::now();
    fleet::until_within("four units re-dated", WITHIN, || {
        let left = redis.units_age_out_in();
        let after_the_answer = |left: &Duration| *left + answered.elapsed();
        left.len() == 4
            && left
                .iter()
                .all(|left| after_the_answer(left) < Duration::from_secs(61))
    })
    .await;
}

/// The sliding log is written twice: in Rust (a process's own budget, and a `FileStore`'s file,
/// which keeps it under the file's lock) and in Lua (Redis's script, run by the server in one
/// step). One sequence of takes and pauses through both gives the same verdicts, and waits that
/// agree within the time between the two calls. No wall-clock wait but the one both stores name.
#[tokio::test]
async fn the_rust_and_the_lua_sliding_logs_agree() {
    use patchworks_auth::store::{FileStore, RedisStore, TokenStore};
    let Some(redis) = Redis::start() else { return };
    let dir = TempDir::new("logs");
    let file = FileStore::new(dir.0.join("token"));
    let lua = RedisStore::new(&redis.url()).unwrap();
    let stores: [&dyn TokenStore; 2] = [&file, &lua];
    let (limit, window) = (3, Duration::from_secs(1));
    let mut taken = 0;
    // Both stores, one step: the verdicts (`None`: taken) and how far apart their waits are.
    let mut step = async |key: &str| {
        let mut verdicts = Vec::new();
        for store in stores {
            taken += 1;
            let name = format!("unit-{taken}");
            verdicts.push(store.take_budget(key, limit, window, &name).await.unwrap());
        }
        let (rust, lua) = (verdicts[0], verdicts[1]);
        assert_eq!(rust.is_some(), lua.is_some(), "Rust {rust:?}, Lua {lua:?}");
        let apart = rust.unwrap_or_default().abs_diff(lua.unwrap_or_default());
        assert!(
            apart < Duration::from_millis(200),
            "Rust {rust:?}, Lua {lua:?}"
        );
        rust.max(lua)
    };
    // A full window: three taken, the fourth told when the oldest ages out.
    for _ in 0..limit {
        assert_eq!(step("a").await, None);
    }
    let wait = step("a").await.expect("the window is full");
    assert!(wait <= window, "{wait:?}");
    // Another account's log is its own.
    assert_eq!(step("b").await, None);
    // Once the window slid past them, three more, and no fourth. The one sleep here stands for
    // the window on the Redis server's clock, which no test clock moves.
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    for _ in 0..limit {
        assert_eq!(step("a").await, None);
    }
    assert!(step("a").await.is_some());
    // A pause outlasts the window; a shorter one does not shorten it.
    for pause in [Duration::from_secs(3), Duration::from_secs(1)] {
        for store in stores {
            store.pause_budget("b", pause).await.unwrap();
        }
        let wait = step("b").await.expect("paused");
        assert!(wait > Duration::from_secs(2), "{wait:?}");
    }
}
