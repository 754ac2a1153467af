//! What the layer costs, next to the floor (the inner service alone) and the physical limit for
//! an auth layer (tower-http's `AddAuthorization`, one static header insert).
//!
//! ```text
//! cargo bench --bench auth
//! python3 benches/report.py    # medians and ratios as a Markdown table
//! ```

use bytes::Bytes;
#[path = "../tests/support/fleet.rs"]
mod fleet;

use criterion::{criterion_group, BatchSize, Criterion};
use http::{header::AUTHORIZATION, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use patchworks_auth::{
    store::RedisStore,
    test_util::{FakePatchworks, HttpClient},
    AuthLayer, Credentials,
};
use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorization;

const API: &str = "https://core.wearepatchworks.com/api/v1/flows";
const LOGIN_PATH: &str = "/api/v1/login";
const TOKEN_ANSWER: &str =
    r#"{"message":"ok","token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcHMifQ.c2ln","expires_in":86400}"#;

type Body = Full<Bytes>;

fn request() -> Request<Body> {
    Request::get(API).body(Body::default()).unwrap()
}

fn response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;
type Inner = tower::util::ServiceFn<fn(Request<Body>) -> Ready>;

/// The floor: answers 200 at once (and a login, for the layer's first request).
fn inner() -> Inner {
    fn answer(request: Request<Body>) -> Ready {
        std::future::ready(Ok(if request.uri().path() == LOGIN_PATH {
            response(StatusCode::OK, TOKEN_ANSWER)
        } else {
            response(StatusCode::OK, "")
        }))
    }
    service_fn(answer as fn(Request<Body>) -> Ready)
}

/// A multi-thread runtime with `workers` worker threads.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls a future that must be ready at once (every service here answers without waiting).
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the warm path must not wait"),
    }
}

fn call<S>(service: &mut S, request: Request<Body>) -> S::Response
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug + Send,
{
    now(poll_fn(|cx| service.poll_ready(cx))).unwrap();
    now(service.call(request)).unwrap()
}

fn credentials() -> Credentials {
    Credentials::new("ops@example.com", "hunter2")
}

/// What a user would write instead: a token behind an async mutex, checked on every request.
#[derive(Clone)]
struct Naive<S> {
    inner: S,
    token: Arc<tokio::sync::Mutex<Option<(HeaderValue, Instant)>>>,
}

impl<S> Naive<S> {
    fn new(inner: S) -> Self {
        Naive {
            inner,
            token: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }
}

impl<S> Service<Request<Body>> for Naive<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let token = self.token.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let header = {
                let mut cached = token.lock().await;
                match &*cached {
                    Some((header, expires_at)) if Instant::now() < *expires_at => header.clone(),
                    _ => {
                        let login =
                            Request::post(format!("https://svc-fabric.pwks.co{LOGIN_PATH}"))
                                .body(Body::default())?;
                        inner.clone().oneshot(login).await?;
                        let header = HeaderValue::from_static("Bearer naive");
                        *cached =
                            Some((header.clone(), Instant::now() + Duration::from_secs(86400)));
                        header
                    }
                }
            };
            request.headers_mut().insert(AUTHORIZATION, header);
            Ok(inner.call(request).await?)
        })
    }
}

/// The four contenders, each ready for warm requests (the layers have logged in).
fn contenders(runtime: &tokio::runtime::Runtime) -> Contenders {
    let _guard = runtime.enter();
    let auth = AuthLayer::new(credentials()).layer(inner());
    let naive = Naive::new(inner());
    runtime.block_on(async {
        assert_eq!(auth.clone().oneshot(request()).await.unwrap().status(), 200);
        assert_eq!(
            naive.clone().oneshot(request()).await.unwrap().status(),
            200
        );
    });
    Contenders {
        auth,
        naive,
        add_authorization: AddAuthorization::bearer(
            inner(),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcHMifQ.c2ln",
        ),
    }
}

struct Contenders {
    auth: patchworks_auth::Auth<Inner>,
    naive: Naive<Inner>,
    add_authorization: AddAuthorization<Inner>,
}

fn warm_path(c: &mut Criterion) {
    let runtime = runtime(1);
    let Contenders {
        mut auth,
        mut naive,
        mut add_authorization,
    } = contenders(&runtime);
    let mut inner = inner();
    // The same layer sharing its token through a real redis-server: the warm path must not
    // notice the store.
    let redis = fleet::Redis::start();
    let mut auth_redis = redis.as_ref().map(|redis| {
        let _guard = runtime.enter();
        let store = RedisStore::new(&redis.url()).unwrap();
        let auth = AuthLayer::new(credentials())
            .store(store)
            .layer(self::inner());
        runtime.block_on(async {
            assert_eq!(auth.clone().oneshot(request()).await.unwrap().status(), 200);
        });
        assert_eq!(auth.state().store_outages, 0, "the store answered");
        auth
    });
    let mut group = c.benchmark_group("warm");
    group.bench_function("inner", |b| {
        b.iter_batched(request, |r| call(&mut inner, r), BatchSize::SmallInput)
    });
    group.bench_function("static", |b| {
        b.iter_batched(
            request,
            |r| call(&mut add_authorization, r),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("auth", |b| {
        b.iter_batched(request, |r| call(&mut auth, r), BatchSize::SmallInput)
    });
    if let Some(auth_redis) = &mut auth_redis {
        group.bench_function("auth_redis_store", |b| {
            b.iter_batched(request, |r| call(auth_redis, r), BatchSize::SmallInput)
        });
    }
    group.bench_function("naive", |b| {
        b.iter_batched(request, |r| call(&mut naive, r), BatchSize::SmallInput)
    });
    // With an in-process API budget that never makes a request wait, against `governor`'s
    // limiter alone in front of the inner service.
    let mut auth_budget = budgeted(&runtime);
    group.bench_function("auth_budget", |b| {
        b.iter_batched(
            request,
            |r| call(&mut auth_budget, r),
            BatchSize::SmallInput,
        )
    });
    let limiter =
        governor::RateLimiter::direct(governor::Quota::per_second(std::num::NonZeroU32::MAX));
    group.bench_function("inner_governor", |b| {
        b.iter_batched(
            request,
            |r| {
                limiter.check().unwrap();
                call(&mut inner, r)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    drop(redis);
}

/// The layer with an in-process budget so large (and a window so short) that no request
/// waits: what taking a unit costs.
fn budgeted(runtime: &tokio::runtime::Runtime) -> patchworks_auth::Auth<Inner> {
    let _guard = runtime.enter();
    let budget = patchworks_auth::budget::Budget::new(u32::MAX, Duration::from_millis(1))
        .margin(Duration::ZERO);
    let auth = AuthLayer::new(credentials()).budget(budget).layer(inner());
    runtime.block_on(async {
        assert_eq!(auth.clone().oneshot(request()).await.unwrap().status(), 200);
    });
    auth
}

/// The same four, driven from `threads` OS threads at once, each with its own clone of one
/// service and a runtime of its own, so that the threads really run in parallel.
fn contended(c: &mut Criterion) {
    let runtime = runtime(1);
    let Contenders {
        auth,
        naive,
        add_authorization,
    } = contenders(&runtime);
    let mut group = c.benchmark_group("contended");
    group.throughput(criterion::Throughput::Elements(1));
    for threads in [1, 2] {
        drive(&mut group, threads, "inner", inner());
        drive(&mut group, threads, "static", add_authorization.clone());
        drive(&mut group, threads, "auth", auth.clone());
        drive(&mut group, threads, "naive", naive.clone());
    }
    group.finish();
}

fn drive<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    threads: u64,
    name: &str,
    service: S,
) where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    group.bench_function(format!("{threads} thread/{name}"), |b| {
        b.iter_custom(|iters| on_threads(&service, threads, iters.div_ceil(threads)))
    });
}

/// How long `threads` OS threads take to send `per_thread` warm requests each, each thread with
/// its own clone of `service` and a runtime of its own.
fn on_threads<S>(service: &S, threads: u64, per_thread: u64) -> Duration
where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let start = std::sync::Barrier::new(threads as usize + 1);
    // The scope returns once every thread is done: time from the start to there.
    let began = std::thread::scope(|scope| {
        for _ in 0..threads {
            let (mut service, start) = (service.clone(), &start);
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                start.wait();
                runtime.block_on(async {
                    for _ in 0..per_thread {
                        let response = service.ready().await.unwrap().call(request()).await;
                        std::hint::black_box(response.unwrap());
                    }
                });
            });
        }
        start.wait();
        Instant::now()
    });
    began.elapsed()
}

/// An inner service whose login takes 5 ms, and that accepts only the latest token. API calls
/// answer at once, without allocating, so that the burst measures the layer.
#[derive(Clone)]
struct Slow {
    logins: Arc<AtomicUsize>,
    current: Arc<arc_swap::ArcSwap<HeaderValue>>,
}

impl Slow {
    fn new() -> Self {
        Slow {
            logins: Arc::new(AtomicUsize::new(0)),
            current: Arc::new(arc_swap::ArcSwap::from_pointee(HeaderValue::from_static(
                "none",
            ))),
        }
    }

    /// Revokes every token issued so far.
    fn revoke(&self) {
        self.current
            .store(Arc::new(HeaderValue::from_static("revoked")));
    }
}

type SlowFuture = futures_util::future::Either<
    Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>,
    Ready,
>;

impl Service<Request<Body>> for Slow {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = SlowFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.uri().path() != LOGIN_PATH {
            let authorized = request.headers().get(AUTHORIZATION) == Some(&**self.current.load());
            let status = if authorized {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            return futures_util::future::Either::Right(std::future::ready(Ok(response(
                status, "",
            ))));
        }
        let (logins, current) = (self.logins.clone(), self.current.clone());
        futures_util::future::Either::Left(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let n = logins.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("tok{n}");
            current.store(Arc::new(
                HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
            ));
            let body = format!(r#"{{"token":"{token}","expires_in":86400}}"#);
            Ok(Response::new(Full::new(Bytes::from(body))))
        }))
    }
}

/// Sends `n` requests at once through `service`, each in a task of its own (as a server's
/// requests are); the time until the last response.
async fn burst<S>(service: &S, n: usize) -> Duration
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    // Requests and service clones are made before the clock starts: the burst is their sending.
    let calls: Vec<_> = (0..n).map(|_| (service.clone(), request())).collect();
    let start = Instant::now();
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(service, request)| tokio::spawn(service.oneshot(request)))
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap().unwrap().status() == StatusCode::OK);
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, n, "every request succeeds");
    elapsed
}

/// 10,000 first requests at once against a login that takes 5 ms; and 1,000 requests meeting
/// one revoked token. Each next to one request that needs one login, its floor.
fn stampede(c: &mut Criterion) {
    let runtime = runtime(2);
    let mut group = c.benchmark_group("stampede");
    group.sample_size(10);
    for (name, n, revoked) in [
        ("cold/1", 1, false),
        ("cold/10000", 10_000, false),
        ("401/1", 1, true),
        ("401/1000", 1_000, true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let slow = Slow::new();
                        let service = AuthLayer::new(credentials()).layer(slow.clone());
                        if revoked {
                            burst(&service, 1).await;
                            slow.revoke();
                        }
                        let before = slow.logins.load(Ordering::SeqCst);
                        total += burst(&service, n).await;
                        assert_eq!(
                            slow.logins.load(Ordering::SeqCst),
                            before + 1,
                            "exactly one login"
                        );
                    }
                    total
                })
            })
        });
    }
    // The harness alone: the same 10,000 tasks with a token already cached.
    group.bench_function("warm/10000", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let service = AuthLayer::new(credentials()).layer(Slow::new());
                burst(&service, 1).await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += burst(&service, 10_000).await;
                }
                total
            })
        })
    });
    group.finish();
}

/// A hyper-util client over loopback TCP to an in-process hyper server.
/// The fake Patchworks, and the layer and a static header over a hyper-util client to it, both
/// carrying a token the fake issued (the layer has logged in).
fn over_loopback(
    runtime: &tokio::runtime::Runtime,
) -> (
    FakePatchworks,
    patchworks_auth::Auth<HttpClient>,
    AddAuthorization<HttpClient>,
) {
    runtime.block_on(async {
        let fake = FakePatchworks::start().await.unwrap();
        let auth = AuthLayer::new(fake.credentials())
            .login_url(fake.login_url())
            .layer(fake.client());
        let warm = auth.clone().oneshot(
            Request::get(fake.uri("/api/v1/flows"))
                .body(Body::default())
                .unwrap(),
        );
        assert_eq!(warm.await.unwrap().status(), StatusCode::OK);
        let token = fake.seen()[1].authorization.clone().unwrap();
        let token = token.strip_prefix("Bearer ").unwrap().to_owned();
        let add_authorization = AddAuthorization::bearer(fake.client(), &token);
        (fake, auth, add_authorization)
    })
}

fn end_to_end(c: &mut Criterion) {
    let runtime = runtime(2);
    let (fake, auth, add_authorization) = over_loopback(&runtime);
    let uri = fake.uri("/api/v1/flows");
    let mut group = c.benchmark_group("end_to_end");
    group.bench_function("static", |b| {
        b.to_async(&runtime).iter(|| {
            let request = Request::get(uri.clone()).body(Body::default()).unwrap();
            let response = add_authorization.clone().oneshot(request);
            async move { assert_eq!(response.await.unwrap().status(), StatusCode::OK) }
        })
    });
    group.bench_function("auth", |b| {
        b.to_async(&runtime).iter(|| {
            let request = Request::get(uri.clone()).body(Body::default()).unwrap();
            let response = auth.clone().oneshot(request);
            async move { assert_eq!(response.await.unwrap().status(), StatusCode::OK) }
        })
    });
    group.finish();

    // 32 requests in flight at once, each its own task on the 2-worker runtime: where a write
    // to memory that every request shares (a reference count, the client's pool) would show.
    let mut group = c.benchmark_group("end_to_end_concurrent");
    group.throughput(criterion::Throughput::Elements(CONCURRENT as u64));
    group.bench_function(format!("static/{CONCURRENT}"), |b| {
        b.to_async(&runtime)
            .iter(|| concurrently(&add_authorization, &uri))
    });
    group.bench_function(format!("auth/{CONCURRENT}"), |b| {
        b.to_async(&runtime).iter(|| concurrently(&auth, &uri))
    });
    group.finish();
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.unauthorized(), 0);
}

const CONCURRENT: usize = 32;

/// [`CONCURRENT`] GETs of `uri` through clones of `client`, each in a task of its own.
async fn concurrently<S>(client: &S, uri: &http::Uri)
where
    S: Service<Request<Body>, Response = Response<hyper::body::Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let request = Request::get(uri.clone()).body(Body::default()).unwrap();
        tasks.spawn(client.clone().oneshot(request));
    }
    while let Some(response) = tasks.join_next().await {
        assert_eq!(response.unwrap().unwrap().status(), StatusCode::OK);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = warm_path, contended, stampede, end_to_end
}

/// `criterion_main!`, plus a mode for a profiler: with `AUTH_PROFILE=<inner|static|auth>:<n>`
/// it sends `n` warm requests through one contender and exits, so that the difference between
/// two `n` under `valgrind --tool=callgrind` is the instructions of that many requests (see
/// BENCHMARKS.md); with `AUTH_PROFILE=e2e-<static|auth>:<n>`, `n` batches of 32 requests in
/// flight over loopback.
///
/// With `AUTH_PAIRED=<rounds>[:<ratio>]` it measures the issue-11 ratios (or the one named:
/// `warm`, `contended` or `end_to_end`) in alternation instead (see [`paired`]).
fn main() {
    if let Ok(spec) = std::env::var("AUTH_PROFILE") {
        return profile(&spec);
    }
    if let Ok(spec) = std::env::var("AUTH_PAIRED") {
        let (rounds, only) = spec
            .split_once(':')
            .map_or((&*spec, None), |(n, r)| (n, Some(r)));
        let usage = "AUTH_PAIRED=<rounds>[:warm|contended|end_to_end]";
        return paired(rounds.parse().expect(usage), only);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

fn profile(spec: &str) {
    let (name, n) = spec
        .split_once(':')
        .expect("AUTH_PROFILE=<inner|static|auth|e2e-static|e2e-auth>:<n>");
    let n: u64 = n.parse().expect("a number of requests");
    if let Some(who) = name.strip_prefix("e2e-") {
        // `n` batches of 32 requests in flight over loopback, client and fake server both.
        let loopback = runtime(2);
        let (fake, auth, add_authorization) = over_loopback(&loopback);
        let uri = fake.uri("/api/v1/flows");
        return loopback.block_on(async {
            for _ in 0..n {
                match who {
                    "static" => concurrently(&add_authorization, &uri).await,
                    "auth" => concurrently(&auth, &uri).await,
                    other => panic!("no contender {other:?}"),
                }
            }
        });
    }
    let runtime = runtime(1);
    let _guard = runtime.enter();
    let Contenders {
        auth,
        add_authorization,
        ..
    } = contenders(&runtime);
    fn run<S>(mut service: S, n: u64)
    where
        S: Service<Request<Body>>,
        S::Error: std::fmt::Debug + Send,
    {
        for _ in 0..n {
            std::hint::black_box(call(&mut service, request()));
        }
    }
    match name {
        "inner" => run(inner(), n),
        "static" => run(add_authorization, n),
        "auth" => run(auth, n),
        "auth_budget" => run(budgeted(&runtime), n),
        other => panic!("no contender {other:?}"),
    }
}

/// The layer against its references, measured in alternation: each round times the contenders
/// one after the other (in turn first), so that the machine's drift, which on a shared machine
/// moves a whole criterion run by a quarter, falls on both sides of each ratio. Prints, per
/// ratio, its median, the median's 95% confidence interval (by order statistics, which assume
/// nothing of the noise's shape), and the quartiles over the rounds. The interval covers the
/// noise within one process; between two processes of one binary the warm median moves by
/// several hundredths (where the code and the stack land), so two binaries are compared over
/// several processes each (see BENCHMARKS.md):
///
/// - warm: auth / static, one thread, 20,000 requests each;
/// - contended: the layer's 1 -> 2 thread scaling / the bare inner service's, 100,000 requests
///   per thread;
/// - end to end: auth / static, 20 batches of 32 requests in flight over loopback.
fn paired(rounds: usize, only: Option<&str>) {
    let measures = |ratio: &str| only.is_none_or(|only| only == ratio);
    assert!(
        ["warm", "contended", "end_to_end"]
            .iter()
            .any(|ratio| measures(ratio)),
        "no ratio {only:?}"
    );
    let runtime = runtime(1);
    let Contenders {
        mut auth,
        mut add_authorization,
        ..
    } = contenders(&runtime);
    let loopback = self::runtime(2);
    let (fake, auth_e2e, static_e2e) = over_loopback(&loopback);
    let uri = fake.uri("/api/v1/flows");

    fn timed(f: &mut dyn FnMut()) -> f64 {
        let began = Instant::now();
        f();
        began.elapsed().as_secs_f64()
    }
    /// `b()` over `a()`, each measured in turn first.
    fn ratio(round: usize, a: &mut dyn FnMut() -> f64, b: &mut dyn FnMut() -> f64) -> f64 {
        if round.is_multiple_of(2) {
            let a = a();
            b() / a
        } else {
            let b = b();
            b / a()
        }
    }
    /// 20 batches of requests in flight at once.
    async fn batches<S>(client: &S, uri: &http::Uri)
    where
        S: Service<Request<Body>, Response = Response<hyper::body::Incoming>>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
        S::Error: std::fmt::Debug + Send,
    {
        for _ in 0..20 {
            concurrently(client, uri).await;
        }
    }
    /// Throughput on two threads over throughput on one.
    fn scaling(on: &dyn Fn(u64) -> Duration) -> f64 {
        2.0 * on(1).as_secs_f64() / on(2).as_secs_f64()
    }
    let (mut warm, mut contended, mut end_to_end) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        if measures("warm") {
            warm.push(ratio(
                round,
                &mut || {
                    timed(&mut || {
                        (0..20_000).for_each(|_| drop(call(&mut add_authorization, request())))
                    })
                },
                &mut || timed(&mut || (0..20_000).for_each(|_| drop(call(&mut auth, request())))),
            ));
        }
        if measures("contended") {
            contended.push(ratio(
                round,
                &mut || scaling(&|threads| on_threads(&inner(), threads, 100_000)),
                &mut || scaling(&|threads| on_threads(&auth, threads, 100_000)),
            ));
        }
        if measures("end_to_end") {
            end_to_end.push(ratio(
                round,
                &mut || timed(&mut || loopback.block_on(batches(&static_e2e, &uri))),
                &mut || timed(&mut || loopback.block_on(batches(&auth_e2e, &uri))),
            ));
        }
    }
    println!("{rounds} rounds, in alternation");
    for (name, mut ratios) in [
        ("warm, auth/static", warm),
        ("contended, auth's 1 -> 2 scaling / inner's", contended),
        ("end to end, 32 in flight, auth/static", end_to_end),
    ] {
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        let at = |q: f64| ratios[((n - 1) as f64 * q).round() as usize];
        // The median lies between the order statistics n/2 -+ 1.96 sqrt(n)/2 with 95%
        // probability, whatever the distribution of the rounds.
        let half_width = 1.96 * (n as f64).sqrt() / 2.0;
        let rank = |offset: f64| ((n as f64 / 2.0 + offset).round().max(0.0) as usize).min(n - 1);
        println!(
            "{name}: median {:.3} (95% {:.3} to {:.3}), quartiles {:.3} to {:.3}, range {:.3} to {:.3}",
            at(0.5),
            ratios[rank(-half_width)],
            ratios[rank(half_width)],
            at(0.25),
            at(0.75),
            at(0.0),
            at(1.0)
        );
    }
    assert_eq!(fake.logins(), 1);
}
