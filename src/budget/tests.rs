//! The budget's rules, on a paused clock where they wait.

use super::*;
use log::Log;

/// The most units any sliding window of `per` holds, for units sent at `times`.
fn most_in_a_window(times: &[Duration], per: Duration) -> usize {
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + per)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Why not `governor` (module docs): a client sending as fast as each limiter lets it, for
/// three minutes in 10 ms steps, under 240 a minute.
#[test]
fn governor_breaks_a_sliding_minute_or_spaces_a_burst_where_the_log_does_neither() {
    use governor::{clock::FakeRelativeClock, Quota, RateLimiter};
    use std::num::NonZeroU32;

    let (minute, step) = (Duration::from_secs(60), Duration::from_millis(10));
    let per_minute = Quota::per_minute(NonZeroU32::new(240).unwrap());
    let run = |mut admit: Box<dyn FnMut(Duration) -> bool>| {
        let mut sent = Vec::new();
        for i in 0..18_000 {
            let now = step * i;
            while admit(now) {
                sent.push(now);
            }
        }
        sent
    };
    let gcra = |quota: Quota| -> Box<dyn FnMut(Duration) -> bool> {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
        let mut at = Duration::ZERO;
        Box::new(move |now| {
            clock.advance(now - at);
            at = now;
            limiter.check().is_ok()
        })
    };
    // A burst of the limit (governor's default): twice the limit in one sliding minute.
    let sent = run(gcra(per_minute));
    assert_eq!(most_in_a_window(&sent, minute), 479);
    // A burst of one keeps the minute, but 50 requests at once take 12.25 s.
    let sent = run(gcra(per_minute.allow_burst(NonZeroU32::new(1).unwrap())));
    assert_eq!(most_in_a_window(&sent, minute), 240);
    assert_eq!(sent[49], Duration::from_millis(12_250));
    // The log: the minute kept (with its margin), and 50 requests at once go at once.
    let (mut log, window) = (Log::default(), micros(Budget::per_minute(240).window()));
    let sent = run(Box::new(move |now| {
        log.take(micros(now), 240, window).is_ok()
    }));
    assert_eq!(most_in_a_window(&sent, minute), 240);
    assert_eq!(sent[49], Duration::ZERO);
}

/// A login that needs a unit goes ahead of the requests queued for the budget (they need
/// its token), and a request's unit is dated when it was taken.
#[tokio::test(start_paused = true)]
async fn a_login_goes_ahead_of_the_requests_queued_for_the_budget() {
    let budget = Budget::new(1, Duration::from_secs(60)).max_wait(Duration::from_secs(600));
    let gate = Arc::new(Gate::new(budget, None));
    let mut first = gate.take(Purpose::Request).await.unwrap();
    first.sending();
    let order = Arc::new(Mutex::new(Vec::new()));
    let take = |purpose, name: &'static str| {
        let (gate, order) = (gate.clone(), order.clone());
        tokio::spawn(async move {
            if let Ok(mut spent) = gate.take(purpose).await {
                spent.sending();
            }
            order.lock().unwrap().push(name);
        })
    };
    let requests: Vec<_> = (0..3).map(|_| take(Purpose::Request, "request")).collect();
    tokio::task::yield_now().await; // the requests queue, the first at the turnstile
    let login = take(Purpose::Login, "login");
    login.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["login"], "the login first");
    drop(first);
    for request in requests {
        request.abort();
    }
}

/// A unit whose request was never sent (the service below failed to get ready, or the
/// caller gave up first) goes back; one sent stays spent, answered or not.
#[tokio::test(start_paused = true)]
async fn a_unit_never_sent_goes_back() {
    let gate = || Arc::new(Gate::new(Budget::new(1, Duration::from_secs(60)), None));
    let unsent = gate();
    drop(unsent.take(Purpose::Request).await.unwrap());
    assert!(unsent.take_now().is_some(), "given back");
    let sent = gate();
    let mut spent = sent.take(Purpose::Request).await.unwrap();
    spent.sending();
    drop(spent);
    assert!(
        sent.take_now().is_none(),
        "sent: spent, though never answered"
    );
    // The warm path's unit is held by the same guard.
    let warm = gate();
    drop(warm.take_now().unwrap());
    assert!(warm.take_now().is_some(), "given back from the warm path");
}

/// A store that answers its first budget take only when told to.
#[derive(Debug, Default)]
struct HeldStore {
    asked: Notify,
    answer: Notify,
    takes: AtomicUsize,
}

impl TokenStore for HeldStore {
    fn load<'a>(&'a self, _: &'a str) -> crate::store::StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async { Ok(None) })
    }
    fn save<'a>(
        &'a self,
        _: &'a str,
        _: &'a [u8],
        _: Duration,
    ) -> crate::store::StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn lock<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> crate::store::StoreFuture<'a, bool> {
        Box::pin(async { Ok(true) })
    }
    fn unlock<'a>(&'a self, _: &'a str, _: &'a str) -> crate::store::StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn take_budget<'a>(
        &'a self,
        _: &'a str,
        _: u32,
        _: Duration,
        _: &'a str,
    ) -> crate::store::StoreFuture<'a, Option<Duration>> {
        Box::pin(async move {
            if self.takes.fetch_add(1, Ordering::SeqCst) == 0 {
                self.asked.notify_one();
                self.answer.notified().await;
            }
            Ok(None)
        })
    }
    fn pause_budget<'a>(&'a self, _: &'a str, _: Duration) -> crate::store::StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// A 429 seen while a unit was being taken from the store: the process hands out no unit
/// before the pause ends, that one included (the pause may not have reached the store).
#[tokio::test(start_paused = true)]
async fn a_unit_from_the_store_waits_for_a_pause_set_meanwhile() {
    let store = Arc::new(HeldStore::default());
    let shared: Arc<dyn TokenStore> = store.clone();
    let gate = Arc::new(Gate::new(
        Budget::per_minute(100),
        Some((shared, "k".into())),
    ));
    let taking = tokio::spawn({
        let gate = gate.clone();
        async move { gate.take(Purpose::Request).await.map(|_| Instant::now()) }
    });
    store.asked.notified().await;
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
    let paused = Instant::now();
    gate.too_many(&headers);
    store.answer.notify_one();
    let taken = taking.await.unwrap().unwrap();
    assert!(
        taken - paused >= Duration::from_secs(2),
        "{:?}",
        taken - paused
    );
}
