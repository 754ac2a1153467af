//! A fleet of 16 processes sharing one token through a store: run it and read its table.
//!
//! ```text
//! cargo run --example fleet            # on a redis-server of its own if installed, else a file
//! cargo run --example fleet -- file    # on a FileStore
//! ```
//!
//! It starts a fake Patchworks on loopback, then 16 copies of itself as members, each a real
//! process with its own layer: a cold start together, a revocation all of them see, and (on
//! Redis) an outage of the store with a revocation during it, then the store back. It prints
//! one row per phase: processes, requests, logins, failed requests, store outages seen.

#[path = "../tests/support/fleet.rs"]
mod fleet;

use fleet::{total, Member, Redis, Report, Spec, TempDir};
use patchworks_auth::test_util::FakePatchworks;
use std::time::Duration;

const FLEET: usize = 16;
const WITHIN: Duration = Duration::from_secs(30);

fn main() {
    if fleet::run_member_if_asked() {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(coordinate());
}

async fn coordinate() {
    let use_file = std::env::args().nth(1).as_deref() == Some("file");
    let dir = TempDir::new("example");
    let mut redis = if use_file { None } else { Redis::start() };
    let store = match &redis {
        Some(redis) => format!("redis:{}", redis.url()),
        None => format!("file:{}", dir.0.join("token").display()),
    };
    let fake = FakePatchworks::start().await.unwrap();
    let spec = Spec {
        login_url: fake.login_url().to_string(),
        api_url: fake.uri("/api/v1/flows").to_string(),
        store: store.clone(),
        requests: None,
        interval_ms: 50,
        login_timeout_ms: 2_000,
        budget: None,
    };
    println!(
        "fleet: {FLEET} processes on {}",
        if redis.is_some() {
            "a RedisStore (redis-server)"
        } else {
            "a FileStore"
        }
    );
    println!(
        "{:<34} {:>9} {:>9} {:>7} {:>9} {:>14}",
        "phase", "processes", "requests", "logins", "failures", "store outages"
    );
    let exe = std::env::current_exe().unwrap();
    let exe = move || exe.clone();
    let mut members: Vec<Member> = (0..FLEET)
        .map(|_| Member::spawn(&exe(), &[], &spec))
        .collect();
    let mut members = blocking(move || {
        members.iter_mut().for_each(|m| m.wait_ready(WITHIN));
        members
    })
    .await;
    row("cold start together", fake.logins(), None);
    let mut logins = fake.logins();

    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.revoke_tokens();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    row("a revocation seen by all", fake.logins() - logins, None);
    logins = fake.logins();

    if let Some(redis) = &mut redis {
        redis.stop();
        fake.revoke_tokens();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        row("store down, a revocation", fake.logins() - logins, None);
        logins = fake.logins();
        redis.start_again();
        tokio::time::sleep(Duration::from_secs(3)).await;
        row("store back (3 s)", fake.logins() - logins, None);
    }
    let reports: Vec<Report> =
        blocking(move || members.drain(..).map(|m| m.finish(WITHIN)).collect()).await;
    row("all phases", fake.logins(), Some(total(&reports)));
}

/// One row; the members' own counts only at the end (they report when they exit).
fn row(phase: &str, logins: usize, sum: Option<Report>) {
    match sum {
        Some(sum) => println!(
            "{phase:<34} {FLEET:>9} {:>9} {logins:>7} {:>9} {:>14}",
            sum.requests, sum.failures, sum.outages
        ),
        None => println!(
            "{phase:<34} {FLEET:>9} {:>9} {logins:>7} {:>9} {:>14}",
            "-", "-", "-"
        ),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
