//! Allocations of one warm request: `AuthLayer` next to tower-http's `AddAuthorization`.
//!
//! Counts are exact (a counting global allocator, counting only this thread), so this is a test,
//! not a benchmark. The token itself must cost no allocation; what else the layer allocates is
//! what it keeps to replay a request after a 401, stated case by case below.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use patchworks_auth::{AuthLayer, Credentials};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    future::{poll_fn, Future},
    pin::pin,
    task::{Context, Poll, Waker},
};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorization;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts, in const-initialized thread locals that
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let output = f();
    COUNTING.with(|c| c.set(false));
    (output, ALLOCATIONS.with(Cell::get))
}

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcHMifQ.c2ln";
const API: &str = "https://core.wearepatchworks.com/api/v1/flows";

type Body = Full<Bytes>;

fn inner(
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(|request: Request<Body>| {
        let body = if request.uri().path() == "/api/v1/login" {
            Bytes::from(format!(r#"{{"token":"{TOKEN}","expires_in":86400}}"#))
        } else {
            Bytes::new()
        };
        std::future::ready(Ok(Response::new(Full::new(body))))
    })
}

/// Polls a future that is ready at once.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a warm request must not wait"),
    }
}

/// Allocations of one request through `service`, from `call` to the response's drop.
fn one_request<S>(service: &mut S, request: Request<Body>) -> usize
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Debug,
{
    now(poll_fn(|cx| service.poll_ready(cx))).unwrap();
    let (status, count) = allocations(|| now(service.call(request)).unwrap().status());
    assert_eq!(status, StatusCode::OK);
    count
}

fn get() -> Request<Body> {
    Request::get(API).body(Body::default()).unwrap()
}

fn post() -> Request<Body> {
    Request::post(API)
        .header("content-type", "application/json")
        .header("x-request-id", "7f0c2a")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(
            br#"{"name":"nightly sync","enabled":true}"#.to_vec(),
        )))
        .unwrap()
}

#[test]
fn a_warm_request_allocates_what_a_static_header_does_plus_what_a_replay_needs() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _runtime = runtime.enter();
    let mut auth = AuthLayer::new(Credentials::new("ops@example.com", "pw")).layer(inner());
    let mut add_authorization = AddAuthorization::bearer(inner(), TOKEN);
    runtime.block_on(async {
        // Logs in, and shares the token's bytes once (its first clone).
        let first = auth.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        add_authorization
            .ready()
            .await
            .unwrap()
            .call(get())
            .await
            .unwrap();
    });

    // A GET without a body: one allocation more, the replay's copy of the URI's text (cheaper
    // than sharing the URI's buffers, whose reference counts cost more: BENCHMARKS.md). The
    // token header is a reference count, as a static header's is; the replay allocates nothing
    // for an empty header map.
    let static_get = one_request(&mut add_authorization, get());
    let auth_get = one_request(&mut auth, get());
    assert_eq!(
        auth_get,
        static_get + 1,
        "GET: auth {auth_get}, static {static_get}"
    );

    // A POST with a small JSON body and three headers: the replay keeps its headers and body in
    // a box of their own (1, so that a bare GET's replay stays small), a copy of the header map,
    // which allocates its index and its entries (2), and shares on their first clone the bytes
    // of the three values and of the custom name `x-request-id`, parsed from strings (4); and it
    // keeps the body, whose bytes are shared on their first clone (1); and the request waits
    // for its body to be read in a box (1), so that the future every request moves stays small;
    // and the URI's text (1). 10 in all, each the price of replaying this request after a 401;
    // the token still costs none.
    let static_post = one_request(&mut add_authorization, post());
    let auth_post = one_request(&mut auth, post());
    assert_eq!(
        auth_post,
        static_post + 10,
        "POST: auth {auth_post}, static {static_post}"
    );

    // A long-lived service, after many requests: the same again.
    for _ in 0..32 {
        one_request(&mut auth, get());
    }
    let own_get = one_request(&mut auth, get());
    let own_post = one_request(&mut auth, post());
    assert_eq!(
        own_get,
        static_get + 1,
        "GET: auth {own_get}, static {static_get}"
    );
    assert_eq!(
        own_post,
        static_post + 10,
        "POST: auth {own_post}, static {static_post}"
    );
}
