//! A fleet on managed Redis: real OS processes (copies of this test binary) sharing a real Redis
//! Cluster (three masters, three replicas) or a real `redis-server` that speaks only TLS, on
//! loopback, against one fake Patchworks; and hosts whose clocks differ.
//!
//! Each scenario runs alone (they share the machine's two cores with 8 processes each).

#[path = "support/fleet.rs"]
mod fleet;

use fleet::{one_at_a_time, total, Member, Redis, RedisCluster, RedisTls, Report, Spec};
use patchworks_auth::test_util::FakePatchworks;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

const FLEET: usize = 8;
const WITHIN: Duration = Duration::from_secs(60);

/// What a member runs: this binary, its one ignored test.
#[test]
#[ignore = "run by the managed Redis tests as a member process"]
fn managed_redis_member() {
    assert!(
        fleet::run_member_trusting(|store, ca| store.root_certificates(ca).unwrap()),
        "run by the managed Redis tests, with {} set",
        fleet::MEMBER_VAR
    );
}

const MEMBER_ARGS: &[&str] = &[
    "--ignored",
    "--exact",
    "managed_redis_member",
    "--nocapture",
    "-q",
];

fn spec(fake: &FakePatchworks, store: String, requests: Option<u64>) -> Spec {
    Spec {
        interval_ms: 0,
        ..Spec::against(fake, store, requests)
    }
}

fn spawn(spec: &Spec, n: usize) -> Vec<Member> {
    let exe: PathBuf = std::env::current_exe().unwrap();
    (0..n)
        .map(|_| Member::spawn(&exe, MEMBER_ARGS, spec))
        .collect()
}

async fn finish(members: Vec<Member>) -> Vec<Report> {
    tokio::task::spawn_blocking(|| members.into_iter().map(|m| m.finish(WITHIN)).collect())
        .await
        .unwrap()
}

/// A real Redis Cluster (see [`RedisCluster::start`]), started off the test's runtime.
async fn cluster(replicas: bool, tls: bool) -> Option<RedisCluster> {
    tokio::task::spawn_blocking(move || RedisCluster::start(replicas, tls))
        .await
        .unwrap()
}

/// 8 processes started together on `store` (trusting `ca`), 5 requests each: one login for
/// all, no failure, the store answering every operation.
async fn eight_cold_processes_log_in_once(fake: &FakePatchworks, store: &str, ca: Option<PathBuf>) {
    let mut cold = spec(fake, store.to_owned(), Some(5));
    cold.ca = ca;
    let reports = finish(spawn(&cold, FLEET)).await;
    let sum = total(&reports);
    assert_eq!(
        (sum.requests, sum.failures),
        (5 * FLEET as u64, 0),
        "{reports:?}"
    );
    assert_eq!(
        sum.outages, 0,
        "the store answered every operation: {reports:?}"
    );
    assert_eq!(
        fake.logins(),
        1,
        "one login for {FLEET} processes on {store}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_cold_on_a_cluster_log_in_once() {
    let _one = one_at_a_time().await;
    let Some(cluster) = cluster(true, false).await else {
        return;
    };
    let fake = FakePatchworks::start().await.unwrap();
    let store = format!("redis-cluster:{}", cluster.urls());
    eight_cold_processes_log_in_once(&fake, &store, None).await;
}

/// 8 processes × 50 requests under `Budget::new(100, 2 s)` against a fake allowing 100 in any
/// 2 s: no 429. The share of the budget used is a figure (BENCHMARKS.md), not an assertion.
async fn a_fleet_keeps_within_the_budget(store: String, ca: Option<PathBuf>) -> f64 {
    let fake = FakePatchworks::start().await.unwrap();
    fake.limit_rate(100, Duration::from_secs(2));
    let mut spec = spec(&fake, store, Some(50));
    (spec.budget, spec.ca) = (Some((100, 2_000)), ca);
    let reports = finish(spawn(&spec, FLEET)).await;
    let sum = total(&reports);
    assert_eq!((sum.requests, sum.failures), (400, 0), "{reports:?}");
    assert_eq!(fake.too_many(), 0, "no 429");
    let share = fleet::share(&fake, 100, Duration::from_secs(2));
    eprintln!("{:.0}% of the budget used", share * 100.0);
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_cluster_keeps_within_the_budget() {
    let _one = one_at_a_time().await;
    let Some(cluster) = cluster(false, false).await else {
        return;
    };
    a_fleet_keeps_within_the_budget(format!("redis-cluster:{}", cluster.urls()), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_tls_keeps_within_the_budget_and_logs_in_once() {
    let _one = one_at_a_time().await;
    let Some(redis) = RedisTls::start() else {
        return;
    };
    let fake = FakePatchworks::start().await.unwrap();
    let store = format!("redis:{}", redis.url());
    eight_cold_processes_log_in_once(&fake, &store, Some(redis.ca())).await;

    a_fleet_keeps_within_the_budget(store, Some(redis.ca())).await;
}

/// A managed cluster that speaks only TLS (its bus and replication too): 8 processes cold log
/// in once, and a fleet keeps within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_tls_cluster_logs_in_once_and_keeps_within_the_budget() {
    let _one = one_at_a_time().await;
    let Some(cluster) = cluster(false, true).await else {
        return;
    };
    let fake = FakePatchworks::start().await.unwrap();
    let store = format!("redis-cluster:{}", cluster.urls());
    eight_cold_processes_log_in_once(&fake, &store, Some(cluster.ca())).await;

    a_fleet_keeps_within_the_budget(store, Some(cluster.ca())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_master_killed_mid_run_fails_no_request_and_logins_stay_single() {
    let _one = one_at_a_time().await;
    let Some(mut cluster) = cluster(true, false).await else {
        return;
    };
    let fake = FakePatchworks::start().await.unwrap();
    let mut spec = spec(&fake, format!("redis-cluster:{}", cluster.urls()), None);
    // A budget: every request asks the cluster for a unit, through the failover.
    (spec.budget, spec.interval_ms) = (Some((1_000, 2_000)), 20);
    let members = spawn(&spec, FLEET);
    let (members, cluster) = tokio::task::spawn_blocking(move || {
        let mut members = members;
        members.iter_mut().for_each(|m| m.wait_ready(WITHIN));
        let killed = cluster.kill_the_accounts_master();
        // A replica takes over (the cluster's node timeout is 1 s).
        let deadline = Instant::now() + WITHIN;
        while cluster
            .the_accounts_master()
            .is_none_or(|port| port == killed)
        {
            assert!(Instant::now() < deadline, "no replica took over");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.wait_until_ok();
        // Every member is on the new master: each took a unit there since it took over (a
        // unit is named by its process, `<owner>-<n>`; the ones replicated before are left out).
        let new = cluster.the_accounts_master().unwrap();
        let before = cluster.units_on(new);
        let owners = || {
            let units = cluster.units_on(new);
            let mut owners: Vec<&str> = units
                .lines()
                .filter(|unit| !before.lines().any(|old| old == *unit))
                .filter_map(|unit| unit.rsplit_once('-').map(|(owner, _)| owner))
                .collect();
            owners.sort_unstable();
            owners.dedup();
            owners.len()
        };
        while owners() < FLEET {
            assert!(
                Instant::now() < deadline,
                "not every member reached the new master"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (members, cluster)
    })
    .await
    .unwrap();
    assert_eq!(fake.logins(), 1);

    // Every process sees a revocation once the fleet is on the new master: one login for the
    // fleet. (In the moment the cluster is up and a process has not yet found the new master,
    // its store operations fail and it would log in by itself: the store never fails a
    // request.)
    let refused_before = fake.unauthorized();
    fake.revoke_tokens();
    fleet::until_within("every member saw the revocation", WITHIN, || {
        fake.unauthorized() - refused_before >= FLEET
    })
    .await;
    let reports = finish(members).await;
    let sum = total(&reports);
    assert_eq!(sum.failures, 0, "{reports:?}");
    assert_eq!(
        fake.logins(),
        2,
        "one more login for the fleet, on the new master"
    );
    drop(cluster);
}

/// The master holding the account's keys frozen (SIGSTOP: it keeps its connections and
/// answers nothing) for longer than the cluster's node timeout, so that a replica takes over,
/// then let go on: no request fails, and none waits on the frozen node past the store's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_master_frozen_mid_run_fails_no_request() {
    let _one = one_at_a_time().await;
    let Some(cluster) = cluster(true, false).await else {
        return;
    };
    let fake = FakePatchworks::start().await.unwrap();
    let mut spec = spec(&fake, format!("redis-cluster:{}", cluster.urls()), None);
    (spec.budget, spec.interval_ms) = (Some((1_000, 2_000)), 20);
    let mut members = spawn(&spec, 4);
    for member in &mut members {
        tokio::task::block_in_place(|| member.wait_ready(WITHIN));
    }
    let frozen = cluster.the_accounts_master().unwrap();
    cluster.signal(frozen, "-STOP");
    // The fleet runs on while the node is frozen and a replica takes over: until the fake saw
    // 50 more requests a member.
    let count = || fake.seen().len();
    let from = count();
    fleet::until_within("running on", WITHIN, || count() >= from + 4 * 50).await;
    cluster.signal(frozen, "-CONT");
    let from = count();
    fleet::until_within("running on after", WITHIN, || count() >= from + 4 * 20).await;
    let reports = finish(members).await;
    assert_eq!(total(&reports).failures, 0, "{reports:?}");
    assert_eq!(fake.logins(), 1);
}

/// Hosts whose wall clocks are 30 s apart (libfaketime in the members) agree on when the
/// token they share expires: its expiry is read on the store's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_whose_clocks_differ_by_30_s_agree_on_when_the_stored_token_expires() {
    let _one = one_at_a_time().await;
    if !std::path::Path::new(fleet::FAKETIME).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing; .ci/run installs it"
        );
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return;
    }
    let Some(redis) = Redis::start() else { return };
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    // When each host says the token expires, on this process's clock.
    let mut expiries = Vec::new();
    for offset in [0, 30, -30] {
        let mut spec = spec(&fake, format!("redis:{}", redis.url()), Some(1));
        spec.clock_offset_s = offset;
        let report = finish(spawn(&spec, 1)).await[0];
        assert_eq!(report.failures, 0);
        expiries.push(Instant::now() + Duration::from_millis(report.expires_in_ms));
    }
    assert_eq!(fake.logins(), 1, "the later hosts took the stored token");
    let (earliest, latest) = (
        expiries.iter().min().unwrap(),
        expiries.iter().max().unwrap(),
    );
    assert!(
        latest.duration_since(*earliest) < Duration::from_secs(5),
        "hosts 30 s apart disagree on the token's expiry by {:?}",
        latest.duration_since(*earliest)
    );
}

/// A store used from one runtime after another (a CLI or a test that makes a runtime per call):
/// redis-rs's connection lives on the runtime that first used it, and once that runtime is
/// gone the store connects again on the next one. At most the first operation on a new runtime
/// fails (and the layer goes on without the store for it). On one server and on a cluster.
#[test]
fn a_redis_store_outlives_the_runtime_that_first_used_it() {
    use patchworks_auth::store::{RedisStore, TokenStore};
    let Some(redis) = Redis::start() else { return };
    let Some(cluster) = RedisCluster::start(false, false) else {
        return;
    };
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.split(',').collect();
    let stores = [
        RedisStore::new(&redis.url()).unwrap(),
        RedisStore::cluster(&urls).unwrap(),
    ];
    for store in stores {
        for round in 0..3 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let value = format!("round {round}");
            let failed = runtime.block_on(async {
                let mut failed = 0;
                for _ in 0..3 {
                    let saved = store.save("k", value.as_bytes(), Duration::from_secs(60));
                    match saved.await {
                        Ok(()) => break,
                        Err(_) => failed += 1,
                    }
                }
                let loaded = store.load("k").await.unwrap();
                assert_eq!(
                    loaded.as_deref(),
                    Some(value.as_bytes()),
                    "{store:?} {round}"
                );
                failed
            });
            assert!(failed <= 1, "{store:?} round {round}: {failed} failures");
        }
    }
}
