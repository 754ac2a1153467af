//! A model check of the driver's concurrent parts with shuttle: requests that need a token,
//! the claims on the logins they start (finished, or dropped unfinished as when a runtime goes),
//! the requests that wait on them, and 401s that discard the current token.
//!
//! shuttle runs the threads below in many random orders, switching at every take of the core's
//! lock (which `cfg(shuttle)` makes shuttle's) and of its own primitives. In every order:
//! - at most one login is in flight;
//! - every request that waits gets an answer (a waiter left hanging is a deadlock, which shuttle
//!   reports);
//! - a 401 answered to a token that was replaced meanwhile never discards the newer one: each
//!   generation is discarded at most once, and the token a request gets after its 401 is newer
//!   than the one refused.

use crate::{
    cache::{After, Cache},
    challenge::Verdict,
    config::{BudgetChoice, Config},
    credentials::Credentials,
    error::Error,
    token::{Endpoint, Obtained, Start, Unauthorized},
};
use http::{HeaderValue, Method, Uri};
use shuttle::{
    future::block_on,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;

fn cache() -> Arc<Cache> {
    let login_url = Uri::from_static("https://svc-fabric.pwks.co/api/v1/login");
    Cache::new(Config {
        credentials: Credentials::new("ops@example.com", "hunter2"),
        trusted: Vec::new(),
        login_url,
        login_url_given: true,
        refresh_before: Duration::from_secs(300),
        login_timeout: Duration::from_secs(30),
        replay_body_limit: 0,
        store: None,
        store_key: None,
        store_timeout: Duration::from_millis(300),
        budget: BudgetChoice::Unset,
    })
}

/// Runs each login the core asks for on a thread of its own: with `abandon_first`, the first is
/// abandoned (its claim dropped, as with its runtime); the others answer with a token.
fn runner(
    cache: &Arc<Cache>,
    abandon_first: bool,
) -> impl Fn(Start) -> Result<After, Error> + Clone + Send + 'static {
    let (cache, in_flight, started) = (
        cache.clone(),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    move |start: Start| {
        let claim = cache.claim(&start);
        let flying = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(flying <= 1, "{flying} logins in flight");
        let n = started.fetch_add(1, Ordering::SeqCst);
        let in_flight = in_flight.clone();
        thread::spawn(move || {
            // The login's I/O: other threads run meanwhile, and none may start a login.
            thread::yield_now();
            // The login counts as in flight until it ends. The count goes down just before the
            // claim is given up, not after: the core may start the next login the moment it
            // is, and that one is no overlap. Between the two there is only the core's lock.
            in_flight.fetch_sub(1, Ordering::SeqCst);
            if n == 0 && abandon_first {
                drop(claim); // abandoned: the next request starts another
                return;
            }
            let header = HeaderValue::from_str(&format!("Bearer token-{n}")).unwrap();
            let obtained = Obtained {
                header,
                obtained_at: Instant::now(),
                lifetime: Duration::from_secs(86_400),
                shared: false,
                scope: None,
            };
            claim.finish(start.reason, Ok(obtained));
        });
        Ok(None)
    }
}

#[test]
fn one_login_at_a_time_every_waiter_answered_and_a_stale_401_discards_nothing() {
    shuttle::check_random(
        || {
            let cache = cache();
            let run = runner(&cache, true);
            let requests: Vec<_> = (0..3)
                .map(|i| {
                    let (cache, run) = (cache.clone(), run.clone());
                    thread::spawn(move || {
                        let token = block_on(cache.token_with(run.clone())).expect("a token").0;
                        if i == 2 {
                            return (token.generation, false, token.generation);
                        }
                        // Two requests get 401 with the token they carried.
                        let endpoint = Endpoint {
                            method: Method::GET,
                            origin: String::new(),
                            path: "/api/v1/flows".to_owned(),
                        };
                        let judged = cache.judge(token.generation, &endpoint, Verdict::Unknown);
                        let discarded = judged == Unauthorized::Renew { discard: true };
                        assert!(
                            matches!(judged, Unauthorized::Renew { .. }),
                            "nothing proves the API refuses"
                        );
                        let next = block_on(cache.token_with(run)).expect("a new token").0;
                        (token.generation, discarded, next.generation)
                    })
                })
                .collect();
            let results: Vec<_> = requests.into_iter().map(|r| r.join().unwrap()).collect();
            let mut discarded: Vec<u64> = results
                .iter()
                .filter(|(_, discarded, _)| *discarded)
                .map(|(generation, _, _)| *generation)
                .collect();
            let count = discarded.len();
            discarded.dedup();
            assert_eq!(
                discarded.len(),
                count,
                "a generation discarded twice: {results:?}"
            );
            for (refused, _, next) in &results[..2] {
                assert!(next > refused, "got back the token refused: {results:?}");
            }
            let newest = results.iter().map(|(_, _, next)| *next).max();
            let current = cache.current().as_ref().map(|token| token.generation);
            assert_eq!(
                current, newest,
                "the newest token was discarded: {results:?}"
            );
        },
        2_000,
    );
}

/// Requests that only wait on one login, with nothing after it to wake them by chance: each is
/// woken by the login's end, whenever it began to wait.
#[test]
fn every_request_waiting_on_one_login_is_woken_by_its_end() {
    shuttle::check_random(
        || {
            let cache = cache();
            let run = runner(&cache, false);
            let requests: Vec<_> = (0..3)
                .map(|_| {
                    let (cache, run) = (cache.clone(), run.clone());
                    thread::spawn(move || block_on(cache.token_with(run)).unwrap().0.generation)
                })
                .collect();
            for request in requests {
                assert_eq!(request.join().unwrap(), 1, "one login for all");
            }
        },
        2_000,
    );
}
