//! Chaos soak: many requests through a hyper-util client with `RetryPolicy` and `AuthLayer`,
//! against a fake Patchworks that misbehaves at random (but seeded) moments.
//!
//! ```text
//! cargo run --release --example soak -- --requests 200000 --concurrency 256 --seed 7
//! ```
//!
//! While it runs, one fault every 20 to 120 ms (the sequence and the gaps come from the seed):
//! the server revokes every token, issues tokens living 1 to 5 s, delays logins up to 300 ms,
//! fails a login with 500, drops connections and answers 429. At the end it prints what happened
//! and exits non-zero if a request failed that could have succeeded (any failure not caused by
//! an injected fault), or if the layer logged in more often than the stated bound.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use patchworks_auth::{retry::RetryPolicy, test_util::FakePatchworks, AuthLayer};
use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tower::{BoxError, ServiceBuilder, ServiceExt};

struct Args {
    requests: usize,
    concurrency: usize,
    seed: u64,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        requests: 20_000,
        concurrency: 64,
        seed: 1,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} takes a number, not {v}"))
        };
        match flag.as_str() {
            "--requests" => args.requests = number(&value)? as usize,
            "--concurrency" => args.concurrency = number(&value)?.max(1) as usize,
            "--seed" => args.seed = number(&value)?,
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --requests, --concurrency, --seed"
                ))
            }
        }
    }
    Ok(args)
}

/// What the chaos task did, to tell injected failures from real ones.
#[derive(Default)]
struct Chaos {
    revocations: AtomicUsize,
    failed_logins: AtomicUsize,
    dropped: AtomicUsize,
    throttled: AtomicUsize,
    /// Faults in effect since a request started can excuse its failure: counts by time.
    events: AtomicUsize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("soak: {message}");
            return ExitCode::from(2);
        }
    };
    match soak(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn soak(args: Args) -> Result<bool, BoxError> {
    println!(
        "soak: {} requests, {} at once, seed {}",
        args.requests, args.concurrency, args.seed
    );
    let fake = Arc::new(FakePatchworks::start().await?);
    fake.set_token_lifetime(Duration::from_secs(3));
    let layer = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .login_timeout(Duration::from_secs(2));
    let client = ServiceBuilder::new()
        .retry(RetryPolicy::new().backoff(Duration::from_millis(5), Duration::from_millis(100)))
        .layer(layer.clone())
        .service(fake.client());

    let chaos = Arc::new(Chaos::default());
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // The chaos: one seeded fault every 20 to 120 ms.
    let chaos_task = tokio::spawn({
        let (fake, chaos, done) = (fake.clone(), chaos.clone(), done.clone());
        let mut rng = fastrand::Rng::with_seed(args.seed);
        async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.u64(20..120))).await;
                chaos.events.fetch_add(1, Ordering::SeqCst);
                // Weights out of 12: a failed login is the rarest, as it fails every request
                // that waits on it and those of its back-off.
                match rng.u8(0..12) {
                    0 | 1 => {
                        chaos.revocations.fetch_add(1, Ordering::SeqCst);
                        fake.revoke_tokens();
                    }
                    2 | 3 => fake.set_token_lifetime(Duration::from_secs(rng.u64(1..=5))),
                    4 | 5 => fake.set_login_delay(Duration::from_millis(rng.u64(0..300))),
                    6 => {
                        chaos.failed_logins.fetch_add(1, Ordering::SeqCst);
                        fake.fail_next_logins(1, StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    7 | 8 => {
                        let n = rng.usize(1..4);
                        chaos.dropped.fetch_add(n, Ordering::SeqCst);
                        fake.drop_api_calls(n);
                    }
                    _ => {
                        let n = rng.usize(1..8);
                        chaos.throttled.fetch_add(n, Ordering::SeqCst);
                        fake.fail_api_calls(n, StatusCode::TOO_MANY_REQUESTS, Some(0));
                    }
                }
            }
        }
    });

    // The load: `concurrency` workers sharing `requests`.
    let next = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new((
        Vec::new(),
        BTreeMap::<String, (usize, bool)>::new(),
    )));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, fake, chaos) = (client.clone(), fake.clone(), chaos.clone());
            let (next, outcomes, total) = (next.clone(), outcomes.clone(), args.requests);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let events_before = chaos.events.load(Ordering::SeqCst);
                    let sent = Instant::now();
                    let request = Request::get(fake.uri("/api/v1/flows"))
                        .body(Full::<Bytes>::default())
                        .expect("a valid request");
                    let result = client.clone().oneshot(request).await;
                    let latency = sent.elapsed();
                    let faults_meanwhile = chaos.events.load(Ordering::SeqCst) > events_before;
                    let (cause, excused) = classify(result, faults_meanwhile);
                    let failed = cause.is_some();
                    {
                        let mut outcomes = outcomes.lock().expect("not poisoned");
                        outcomes.0.push(latency);
                        if let Some(cause) = cause {
                            let entry = outcomes.1.entry(cause).or_insert((0, excused));
                            entry.0 += 1;
                            entry.1 &= excused;
                        }
                    }
                    if failed {
                        // As a caller would: a failure is not retried at once in a tight loop.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    chaos_task.await?;

    let (mut latencies, failures) = std::mem::take(&mut *outcomes.lock().expect("not poisoned"));
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let failed: usize = failures.values().map(|(n, _)| n).sum();
    let unexcused: usize = failures
        .values()
        .filter(|(_, excused)| !excused)
        .map(|(n, _)| n)
        .sum();

    // Tokens live at least 1 s and are renewed no earlier than half-way: at most two logins a
    // second from age. Each revocation costs one login, each injected login failure one more.
    let seconds = elapsed.as_secs_f64().ceil() as usize;
    let revocations = chaos.revocations.load(Ordering::SeqCst);
    let failed_logins = chaos.failed_logins.load(Ordering::SeqCst);
    let needed = fake.tokens_used();
    let bound = 1 + revocations + failed_logins + 2 * seconds;
    let logins = fake.logins();

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| requests sent | {} |", latencies.len());
    println!("| succeeded | {} |", latencies.len() - failed);
    for (cause, (count, excused)) in &failures {
        let note = if *excused { "injected" } else { "NOT EXCUSED" };
        println!("| failed: {cause} | {count} ({note}) |");
    }
    println!("| run time | {:.2} s |", elapsed.as_secs_f64());
    println!(
        "| faults scheduled | {} revocations, {} failed logins, {} dropped connections, {} 429s |",
        revocations,
        failed_logins,
        chaos.dropped.load(Ordering::SeqCst),
        chaos.throttled.load(Ordering::SeqCst)
    );
    println!("| logins performed (failed ones included) | {logins} |");
    println!("| logins needed (tokens that served a request) | {needed} |");
    println!(
        "| logins allowed at most | {bound} (1 + revocations + failed logins + 2 per second) |"
    );
    println!(
        "| most requests waiting on one login | {} |",
        layer.state().most_waiting
    );
    println!(
        "| latency p50 / p99 / max | {:?} / {:?} / {:?} |",
        percentile(0.5),
        percentile(0.99),
        percentile(1.0)
    );
    println!(
        "| tokens sent after expiry (server's count) | {} |",
        fake.expired_tokens_seen()
    );
    println!();

    let mut ok = true;
    if unexcused > 0 {
        println!("FAIL: {unexcused} requests failed that could have succeeded");
        ok = false;
    }
    if logins > bound {
        println!("FAIL: {logins} logins, more than the bound {bound}");
        ok = false;
    }
    if ok {
        println!("PASS: every failure was an injected fault; logins within the bound");
    }
    Ok(ok)
}

/// The cause of a failed request, and whether an injected fault explains it.
fn classify(
    result: Result<http::Response<hyper::body::Incoming>, BoxError>,
    faults_meanwhile: bool,
) -> (Option<String>, bool) {
    match result {
        Ok(response) if response.status() == StatusCode::OK => (None, true),
        // The retries ran out on injected 429s.
        Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
            (Some("429 after the retries".into()), true)
        }
        // A revocation met the replay too: one replay only, by design.
        Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
            (Some("401 returned to the caller".into()), faults_meanwhile)
        }
        Ok(response) => (Some(format!("HTTP {}", response.status())), false),
        Err(error) => match error.downcast_ref::<patchworks_auth::Error>() {
            // Injected 500s and slow logins: transient, reported as the login's error.
            Some(auth) if auth.status() == Some(StatusCode::INTERNAL_SERVER_ERROR) => {
                (Some("login failed (injected 500)".into()), true)
            }
            Some(auth) if auth.is_timeout() => (Some("login timed out".into()), faults_meanwhile),
            Some(auth) => (Some(format!("login: {auth}")), false),
            // Dropped connections that outlasted the retries.
            None => (Some(format!("transport: {error}")), faults_meanwhile),
        },
    }
}
