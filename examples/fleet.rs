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
//!
//! Then the API budget: 8 processes each send 50 requests as fast as they can against a fake
//! that allows 100 requests in any 2 s (answering 429 beyond), without a budget and with
//! `Budget::new(100, 2 s)` shared through the same store: requests, 429s, and the throughput
//! against the budget's 50 a second.

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
    let spec = Spec::against(&fake, store.clone(), None);
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

    println!(
        "\nAPI budget: 8 processes x 50 requests, a fake allowing 100 in any 2 s\n{:<26} {:>9} {:>6} {:>13} {:>11}",
        "budget", "requests", "429s", "requests/s", "vs 50/s"
    );
    for budget in [None, Some((100, 2_000))] {
        let fake = FakePatchworks::start().await.unwrap();
        fake.limit_rate(100, Duration::from_secs(2));
        let spec = Spec {
            interval_ms: 0,
            login_timeout_ms: 10_000,
            budget,
            ..Spec::against(&fake, store.clone(), Some(50))
        };
        let members: Vec<Member> = (0..8).map(|_| Member::spawn(&exe(), &[], &spec)).collect();
        let reports: Vec<Report> =
            blocking(move || members.into_iter().map(|m| m.finish(WITHIN)).collect()).await;
        let seen = fake.seen();
        let first = seen.iter().map(|s| s.received_at).min().unwrap();
        let last = seen.iter().map(|s| s.received_at).max().unwrap();
        let rate = seen.len() as f64 / last.duration_since(first).as_secs_f64();
        let name = match budget {
            None => "none".to_owned(),
            Some(_) => "Budget::new(100, 2 s)".to_owned(),
        };
        println!(
            "{name:<26} {:>9} {:>6} {:>13.1} {:>10.0}%",
            total(&reports).requests,
            fake.too_many(),
            rate,
            rate / 50.0 * 100.0
        );
    }
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
