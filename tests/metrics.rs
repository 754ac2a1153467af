//! The layer's metrics (feature `metrics`), read with `metrics-util`'s debugging recorder,
//! installed for this thread: every test runs on a current-thread runtime, so the logins and
//! store operations its tasks run are recorded here too. And `watch()`.

mod support;

use http::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use patchworks_auth::{
    store::FileStore,
    test_util::{hold_clock, FakePatchworks},
    AuthLayer, Credentials,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;
use tower::Layer;

/// What the recorder recorded so far: the debugging recorder's snapshots give what changed
/// since the last one (counters' increments, gauges' last values, histograms' samples), added
/// up here.
#[derive(Default)]
struct Recorded(std::collections::HashMap<String, f64>);

impl Recorded {
    fn read(&mut self, snapshotter: &Snapshotter) -> &mut Self {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let entry = self
                .0
                .entry(format!("{}{{{}}}", key.name(), labels.join(",")))
                .or_default();
            match value {
                DebugValue::Counter(n) => *entry += n as f64,
                DebugValue::Gauge(v) if v.into_inner() != 0.0 => *entry = v.into_inner(),
                DebugValue::Gauge(_) => {}
                DebugValue::Histogram(samples) => *entry += samples.len() as f64,
            }
        }
        self
    }

    /// A counter's count, a gauge's value, a histogram's number of samples.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        self.0
            .get(&format!("{name}{{{}}}", labels.join(",")))
            .copied()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn logins_401s_replays_the_expiry_and_the_store_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let metrics = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::default();
    let mut count = |name: &str, labels: &[(&str, &str)]| recorded.read(&metrics).get(name, labels);

    // A first login, with a store: a load (a miss), the lock, a save.
    let dir = std::env::temp_dir().join(format!("patchworks-metrics-{}", std::process::id()));
    let fake = FakePatchworks::start().await.unwrap();
    // Long enough that no renewal falls inside the test, however slow the machine.
    fake.set_token_lifetime(Duration::from_secs(600));
    let client = layer(&fake)
        .store(FileStore::new(dir.join("token")))
        .layer(fake.client());
    let mut watch = client.watch();
    flows_ok(&client, &fake).await;
    let logins = "patchworks_auth_logins_total";
    assert_eq!(
        count(
            logins,
            &[
                ("form", "email"),
                ("reason", "first_use"),
                ("outcome", "ok")
            ]
        ),
        Some(1.0)
    );
    let duration = "patchworks_auth_login_duration_seconds";
    assert_eq!(
        count(duration, &[("outcome", "ok")]),
        Some(1.0),
        "one sample"
    );
    let expiry = count("patchworks_auth_token_expiry_timestamp_seconds", &[]).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now + 590.0..now + 610.0).contains(&expiry),
        "{expiry} against {now}"
    );
    let store = "patchworks_auth_store_operations_total";
    // A load, the lock, a load again under it, then (after the callers have the token, the
    // request that logged in waiting for it) the save.
    for (op, outcome, times) in [
        ("load", "miss", 2.0),
        ("lock", "ok", 1.0),
        ("save", "ok", 1.0),
    ] {
        let labels = [("op", op), ("outcome", outcome)];
        assert_eq!(count(store, &labels), Some(times), "{op}");
    }
    assert!(watch.has_changed().unwrap(), "the login changed the watch");
    assert!(watch.borrow_and_update().obtained_at.is_some());

    // A stale 401 and its replay.
    fake.revoke_tokens();
    flows_ok(&client, &fake).await;
    let unauthorized = "patchworks_auth_unauthorized_total";
    assert_eq!(count(unauthorized, &[("verdict", "stale")]), Some(1.0));
    assert_eq!(
        count("patchworks_auth_replays_total", &[("outcome", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        count(
            logins,
            &[
                ("form", "email"),
                ("reason", "unauthorized"),
                ("outcome", "ok")
            ]
        ),
        Some(1.0)
    );

    // A permission 401.
    fake.forbid(
        "/api/v1/admin",
        Some(r#"Bearer error="insufficient_scope""#),
    );
    hold_clock(expect_status(
        &client,
        &fake,
        "/api/v1/admin",
        StatusCode::UNAUTHORIZED,
    ))
    .await;
    assert_eq!(count(unauthorized, &[("verdict", "refused")]), Some(1.0));

    // A rejected login.
    let wrong = AuthLayer::new(Credentials::new("ops@example.com", "wrong"))
        .login_url(fake.login_url())
        .layer(fake.client());
    assert!(layer_error(&wrong, &fake, "/api/v1/flows")
        .await
        .is_rejected());
    assert_eq!(
        count(
            logins,
            &[
                ("form", "email"),
                ("reason", "first_use"),
                ("outcome", "rejected")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(count(duration, &[("outcome", "rejected")]), Some(1.0));

    // No label carries the email, the token or a URL.
    let token = last_api_authorization(&fake).unwrap();
    count("", &[]);
    for key in recorded.0.keys() {
        for secret in [
            patchworks_auth::test_util::EMAIL,
            token.as_str(),
            "127.0.0.1",
            "/api/",
        ] {
            assert!(!key.contains(secret), "{secret} in {key}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A client whose 2 s token has just come into its renewal window (after half its life: the
/// time these tests are about), on a paused clock with I/O in `hold_clock`; its watch marked
/// seen after the login.
async fn due_for_renewal(
    fake: &FakePatchworks,
) -> (
    Client,
    tokio::sync::watch::Receiver<patchworks_auth::TokenState>,
) {
    fake.set_token_lifetime(Duration::from_secs(2));
    let client = client(fake);
    let mut watch = client.watch();
    hold_clock(expect_status(
        &client,
        fake,
        "/api/v1/flows",
        StatusCode::OK,
    ))
    .await;
    watch.borrow_and_update();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    (client, watch)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_renewal_is_recorded() {
    let recorder = DebuggingRecorder::new();
    let metrics = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::default();
    let fake = FakePatchworks::start().await.unwrap();
    let (client, mut watch) = due_for_renewal(&fake).await;
    let first = watch.borrow().obtained_at;
    assert!(first.is_some());
    // The renewal runs in the background; the watch says when it is done.
    flows_ok(&client, &fake).await;
    hold_clock(watch.wait_for(|state| state.obtained_at > first))
        .await
        .unwrap();
    let labels = [("form", "email"), ("reason", "renewal"), ("outcome", "ok")];
    let renewals = recorded
        .read(&metrics)
        .get("patchworks_auth_logins_total", &labels);
    assert_eq!(renewals, Some(1.0));
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_with_a_fresh_token_records_nothing() {
    let recorder = DebuggingRecorder::new();
    let metrics = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let fake = FakePatchworks::start().await.unwrap();
    let client = client(&fake);
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    metrics.snapshot(); // what the login recorded
    for _ in 0..100 {
        expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    }
    let mut recorded = Recorded::default();
    recorded.read(&metrics);
    assert!(recorded.0.values().all(|v| *v == 0.0), "{:?}", recorded.0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn watch_wakes_on_a_failed_renewal_with_its_error() {
    let fake = FakePatchworks::start().await.unwrap();
    let (client, mut watch) = due_for_renewal(&fake).await;
    fake.set_login_answer(patchworks_auth::test_util::LoginAnswer::Status(
        StatusCode::UNAUTHORIZED,
    ));
    flows_ok(&client, &fake).await;
    hold_clock(watch.changed()).await.unwrap();
    let state = watch.borrow().clone();
    assert!(state.usable, "the token stays in use: {state:?}");
    assert!(
        state.last_error.as_ref().is_some_and(|e| e.is_rejected()),
        "{state:?}"
    );
    let debug = format!("{state:?}");
    assert!(debug.contains("s ago") && debug.contains("in "), "{debug}");
}

#[tokio::test(flavor = "current_thread")]
async fn the_budget_records_its_waits_pauses_and_refusals() {
    use patchworks_auth::budget::Budget;

    let recorder = DebuggingRecorder::new();
    let metrics = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let fake = FakePatchworks::start().await.unwrap();
    let budget = Budget::new(3, Duration::from_secs(60)).max_wait(Duration::from_millis(50));
    let client = layer(&fake).budget(budget).layer(fake.client());
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    fake.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(0));
    let throttled = StatusCode::TOO_MANY_REQUESTS;
    expect_status(&client, &fake, "/api/v1/flows", throttled).await;
    // The login and two requests took the window's three units: the next waits, and is
    // refused after 50 ms.
    let error = layer_error(&client, &fake, "/api/v1/flows").await;
    assert!(error.is_budget_exhausted(), "{error}");
    let mut recorded = Recorded::default();
    recorded.read(&metrics);
    assert_eq!(
        recorded.get("patchworks_auth_budget_pauses_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        recorded.get("patchworks_auth_budget_refused_total", &[]),
        Some(1.0)
    );
    let waits = recorded.get("patchworks_auth_budget_wait_seconds", &[]);
    assert_eq!(waits, None, "no request waited and went");
}

/// `TokenState::last_reason` says why the last login ran, by the names of the logs and the
/// metrics: a subscriber tells a first login from a login after a 401.
#[tokio::test(flavor = "current_thread")]
async fn the_state_says_why_the_last_login_ran() {
    use patchworks_auth::LoginReason;
    let fake = FakePatchworks::start().await.unwrap();
    let client = layer(&fake).layer(fake.client());
    assert_eq!(client.state().last_reason, None);
    flows_ok(&client, &fake).await;
    let reason = client.state().last_reason.unwrap();
    assert_eq!(
        (reason, reason.as_str()),
        (LoginReason::FirstUse, "first_use")
    );
    fake.revoke_tokens();
    flows_ok(&client, &fake).await;
    let reason = client.state().last_reason.unwrap();
    assert_eq!(
        (reason, reason.as_str()),
        (LoginReason::Unauthorized, "unauthorized")
    );
}
