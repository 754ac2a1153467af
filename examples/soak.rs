//! Chaos soak: many requests through a hyper-util client with `RetryPolicy` and `AuthLayer`,
//! against a fake Patchworks that misbehaves at random (but seeded) moments.
//!
//! ```text
//! cargo run --release --example soak -- --requests 200000 --concurrency 256 --seed 7
//! ```
//!
//! While it runs, one fault every 20 to 120 ms (the sequence and the gaps come from the seed):
//! the server revokes every token, issues tokens living 1 to 5 s, delays logins up to 300 ms,
//! fails a login attempt with 500 or 503, drops a login's connection, throttles a login with
//! `429` and `Retry-After: 1`, drops API connections and answers API calls 429. One request in
//! 20 goes to an endpoint the account may not use (401 with `insufficient_scope`, or a bare
//! 401). Beside the workers, a thread makes clients the way a sync facade does: a new Tokio
//! runtime and client per call, the layer shared. `--reject-once` also makes one login reject
//! the credentials.
//!
//! At the end it prints what happened, split into failures the layer must absorb (login blips,
//! revocations, expiry, runtimes coming and going: there must be none) and the answers it passes
//! on by design (permission 401s, rejected credentials, the API's own 429s and dropped
//! connections once the retry policy gives up). It exits non-zero if any failure of the first
//! kind happened, or if the layer logged in more often than the stated bound.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use patchworks_auth::{
    retry::RetryPolicy,
    test_util::{FakePatchworks, LoginAnswer},
    AuthLayer,
};
use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};

/// The layer's login timeout in the soak.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Endpoints the account may not use, and the challenge each answers with.
const FORBIDDEN: [(&str, Option<&str>); 2] = [
    (
        "/api/v1/admin",
        Some(r#"Bearer error="insufficient_scope""#),
    ),
    ("/api/v1/audit", None),
];

struct Args {
    requests: usize,
    concurrency: usize,
    seed: u64,
    reject_once: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        requests: 20_000,
        concurrency: 64,
        seed: 1,
        reject_once: false,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--reject-once" {
            args.reject_once = true;
            continue;
        }
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
                    "unknown flag {flag}; use --requests, --concurrency, --seed, --reject-once"
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
    /// Login attempts made to fail: 5xx, dropped, 429 with `Retry-After`, rejected.
    failed_logins: AtomicUsize,
    throttled_logins: AtomicUsize,
    rejected_logins: AtomicUsize,
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
    for (path, challenge) in FORBIDDEN {
        fake.forbid(path, challenge);
    }
    let layer = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .login_timeout(LOGIN_TIMEOUT);
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
        let mut reject = args.reject_once;
        // Login faults model outages shorter than the login timeout: one at a time, with a
        // login timeout between them, so that a login can always outlast one.
        let mut last_login_fault = Instant::now();
        async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.u64(20..120))).await;
                chaos.events.fetch_add(1, Ordering::SeqCst);
                let login_fault_allowed =
                    fake.queued_login_answers() == 0 && last_login_fault.elapsed() > LOGIN_TIMEOUT;
                if reject && login_fault_allowed && rng.bool() {
                    reject = false;
                    last_login_fault = Instant::now();
                    chaos.rejected_logins.fetch_add(1, Ordering::SeqCst);
                    fake.queue_login_answers([LoginAnswer::Status(StatusCode::UNAUTHORIZED)]);
                    fake.revoke_tokens(); // so that a login meets the rejection soon
                    continue;
                }
                if login_fault_allowed && rng.u8(0..3) == 0 {
                    last_login_fault = Instant::now();
                    if rng.bool() {
                        // A blip of one to three failed attempts, each absorbed by the login.
                        let blip: Vec<_> = (0..rng.usize(1..=3))
                            .map(|_| match rng.u8(0..3) {
                                0 => LoginAnswer::Status(StatusCode::INTERNAL_SERVER_ERROR),
                                1 => LoginAnswer::Status(StatusCode::SERVICE_UNAVAILABLE),
                                _ => LoginAnswer::Drop,
                            })
                            .collect();
                        chaos.failed_logins.fetch_add(blip.len(), Ordering::SeqCst);
                        fake.queue_login_answers(blip);
                    } else {
                        chaos.throttled_logins.fetch_add(1, Ordering::SeqCst);
                        fake.queue_login_answers([LoginAnswer::Throttled { retry_after: 1 }]);
                    }
                    // So that a login meets it soon.
                    fake.revoke_tokens();
                    chaos.revocations.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                match rng.u8(0..11) {
                    0 | 1 => {
                        chaos.revocations.fetch_add(1, Ordering::SeqCst);
                        fake.revoke_tokens();
                    }
                    2 | 3 => fake.set_token_lifetime(Duration::from_secs(rng.u64(1..=5))),
                    4 | 5 => fake.set_login_delay(Duration::from_millis(rng.u64(0..300))),
                    6 | 7 => {
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

    // A sync facade beside them: a runtime and a client per call, the layer shared.
    let facade = std::thread::spawn({
        let (layer, fake, done) = (layer.clone(), fake.clone(), done.clone());
        move || -> (usize, Vec<String>) {
            let (mut calls, mut failures) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                let result = runtime.block_on(async {
                    let client = layer.layer(fake.client());
                    let request = Request::get(fake.uri("/api/v1/flows"))
                        .body(Full::<Bytes>::default())
                        .expect("a valid request");
                    client.oneshot(request).await
                });
                calls += 1;
                // Without a retry policy, the API's own 429s and dropped connections reach it.
                if let (Some(cause), false) = classify(result, false, true) {
                    failures.push(cause);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (calls, failures)
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
                    // One request in 20 to an endpoint the account may not use.
                    let path = match next.load(Ordering::Relaxed) % 40 {
                        0 => FORBIDDEN[0].0,
                        20 => FORBIDDEN[1].0,
                        _ => "/api/v1/flows",
                    };
                    let request = Request::get(fake.uri(path))
                        .body(Full::<Bytes>::default())
                        .expect("a valid request");
                    let result = client.clone().oneshot(request).await;
                    let latency = sent.elapsed();
                    let faults_meanwhile = chaos.events.load(Ordering::SeqCst) > events_before;
                    let forbidden = path != "/api/v1/flows";
                    let (cause, excused) = classify(result, forbidden, faults_meanwhile);
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
    let (facade_calls, facade_failures) = facade.join().map_err(|_| "the facade panicked")?;

    let (mut latencies, failures) = std::mem::take(&mut *outcomes.lock().expect("not poisoned"));
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let failed: usize = failures.values().map(|(n, _)| n).sum();
    let unexcused: usize = failures
        .values()
        .filter(|(_, excused)| !excused)
        .map(|(n, _)| n)
        .sum::<usize>()
        + facade_failures.len();

    // Tokens live at least 1 s and are renewed no earlier than half-way: at most two logins a
    // second from age. Each revocation costs one login, each injected login failure one more.
    let seconds = elapsed.as_secs_f64().ceil() as usize;
    let revocations = chaos.revocations.load(Ordering::SeqCst);
    let failed_logins = chaos.failed_logins.load(Ordering::SeqCst)
        + chaos.throttled_logins.load(Ordering::SeqCst)
        + chaos.rejected_logins.load(Ordering::SeqCst);
    let needed = fake.tokens_used();
    // A rejection backs off 5 s at least, so it adds nothing; permission 401s without a
    // challenge cost a login per endpoint and grace, at most one a second each.
    let bound = 1 + revocations + failed_logins + (2 + FORBIDDEN.len()) * seconds;
    let logins = fake.logins();

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| requests sent | {} |", latencies.len());
    println!("| succeeded | {} |", latencies.len() - failed);
    println!("| **failed from faults the layer absorbs** | **{unexcused}** |");
    for (cause, (count, excused)) in &failures {
        let note = if *excused {
            "passed on by design"
        } else {
            "NOT EXCUSED"
        };
        println!("| {cause} | {count} ({note}) |");
    }
    println!(
        "| runtime-per-call clients: calls, failed | {facade_calls}, {} |",
        facade_failures.len()
    );
    for failure in facade_failures.iter().take(3) {
        println!("| runtime-per-call failure | {failure} (NOT EXCUSED) |");
    }
    println!("| run time | {:.2} s |", elapsed.as_secs_f64());
    println!(
        "| faults scheduled | {} revocations, {} failed login attempts (5xx, dropped), {} login \
         429s, {} rejected logins, {} dropped API connections, {} API 429s |",
        revocations,
        chaos.failed_logins.load(Ordering::SeqCst),
        chaos.throttled_logins.load(Ordering::SeqCst),
        chaos.rejected_logins.load(Ordering::SeqCst),
        chaos.dropped.load(Ordering::SeqCst),
        chaos.throttled.load(Ordering::SeqCst)
    );
    println!("| logins performed (failed ones included) | {logins} |");
    println!("| logins needed (tokens that served a request) | {needed} |");
    println!(
        "| logins allowed at most | {bound} (1 + revocations + failed attempts + 4 per second) |"
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
        println!(
            "PASS: no failure from a fault the layer absorbs; the rest passed on by design; \
             logins within the bound"
        );
    }
    Ok(ok)
}

/// The cause of a failed request, and whether it is one the layer passes on by design (`true`)
/// rather than one it must absorb.
fn classify(
    result: Result<http::Response<hyper::body::Incoming>, BoxError>,
    forbidden: bool,
    faults_meanwhile: bool,
) -> (Option<String>, bool) {
    match result {
        Ok(response) if response.status() == StatusCode::OK && !forbidden => (None, true),
        // The endpoint refuses the account: the API's answer, returned as it is.
        Ok(response) if response.status() == StatusCode::UNAUTHORIZED && forbidden => (
            Some("permission 401 (endpoint the account may not use)".into()),
            true,
        ),
        // The API's own 429s, once the retry policy gave up.
        Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
            (Some("API 429 after the retries".into()), true)
        }
        // A second revocation met the replay too: one replay only, by design.
        Ok(response) if response.status() == StatusCode::UNAUTHORIZED => (
            Some("401: revoked again during the replay".into()),
            faults_meanwhile,
        ),
        Ok(response) => (Some(format!("HTTP {}", response.status())), false),
        Err(error) => match error.downcast_ref::<patchworks_auth::Error>() {
            Some(auth) if auth.is_rejected() => (
                Some("login rejected the credentials (injected)".into()),
                true,
            ),
            // Login blips, throttling and slow logins are the layer's to absorb.
            Some(auth) => (Some(format!("login: {auth}")), false),
            // Dropped connections that outlasted the retries.
            None => (
                Some("API connection dropped, after the retries".into()),
                faults_meanwhile,
            ),
        },
    }
}
