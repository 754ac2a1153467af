//! Faults the soak cannot pin down exactly: time crossing expiry mid-request, a renewal under
//! load, an inner service that is not ready, and login answers too large to read.

mod support;

use http::{Request, Response, StatusCode};
use patchworks_auth::test_util::{hold_clock, FakePatchworks, LOGIN_PATH};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{BoxError, Layer, Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_while_its_token_expires_completes_and_the_next_logs_in() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(60));
    let client = layer(&fake)
        .login_timeout(Duration::from_secs(3600))
        .layer(fake.client());
    assert_eq!(
        hold_clock(status(&client, &fake, "/warm")).await,
        StatusCode::OK
    );

    // The server takes 100 s to answer: the token expires on the way.
    fake.set_api_delay(Duration::from_secs(100));
    let started = tokio::time::Instant::now();
    assert_eq!(
        status(&client, &fake, "/api/v1/slow-report").await,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_secs(100));
    fake.set_api_delay(Duration::ZERO);

    assert_eq!(
        hold_clock(status(&client, &fake, "/api/v1/flows")).await,
        StatusCode::OK
    );
    assert_eq!(fake.logins(), 2, "a new login for the request after expiry");
    assert_eq!(fake.expired_tokens_seen(), 0);
}

/// On a paused clock, so that loopback's time in flight (long on a busy machine) ages no token:
/// the fake holds the renewal (an event, not a timer) while 1,000 requests go out, then lets it
/// answer; past the old token's expiry, 1,000 more requests all carry the new one.
#[tokio::test(start_paused = true)]
async fn a_renewal_while_a_thousand_requests_are_in_flight_sends_no_expired_token() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(2));
    let client = layer(&fake)
        .refresh_before(Duration::from_secs(10))
        .layer(fake.client());
    assert_eq!(
        hold_clock(status(&client, &fake, "/warm")).await,
        StatusCode::OK
    );
    let first = last_api_authorization(&fake).unwrap();
    let mut changes = client.watch();
    changes.borrow_and_update();

    // A 2 s token is due for renewal after 1 s (the window is at most half its life) and sent
    // until 1.8 s: the time this test is about.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    fake.hold_logins();
    let statuses = hold_clock(concurrent_gets(&client, &fake, 1000)).await;
    assert_all_ok(&statuses);
    hold_clock(until("the renewal reaches the fake", || fake.logins() == 2)).await;
    assert!(
        fake.seen()
            .iter()
            .skip(1)
            .all(|seen| seen.path == LOGIN_PATH || seen.authorization.as_ref() == Some(&first)),
        "sent with the old token while the renewal is held"
    );
    // The renewed token lives long: no second renewal below.
    fake.set_token_lifetime(Duration::from_secs(600));
    fake.release_logins();
    hold_clock(changes.changed()).await.unwrap();
    assert!(changes.borrow().usable, "renewed: {:?}", *changes.borrow());

    // Past the first token's expiry (2 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let statuses = hold_clock(concurrent_gets(&client, &fake, 1000)).await;
    assert_all_ok(&statuses);
    assert_eq!(fake.logins(), 2, "one renewal");
    assert_ne!(last_api_authorization(&fake).unwrap(), first);
    assert_eq!(fake.expired_tokens_seen(), 0);
    assert_eq!(fake.unauthorized(), 0);
}

/// Wraps a service: not ready for the first `pending` polls, then failing one `poll_ready`.
#[derive(Clone)]
struct Moody<S> {
    inner: S,
    pending: Arc<AtomicUsize>,
    fail_once: Arc<AtomicBool>,
}

impl<S, B> Service<Request<B>> for Moody<S>
where
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.fail_once.swap(false, Ordering::SeqCst) {
            return Poll::Ready(Err("the connection pool is closed".into()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        self.inner.call(request)
    }
}

#[tokio::test]
async fn an_inner_service_not_ready_for_a_while_or_failing_readiness() {
    let fake = FakePatchworks::start().await.unwrap();
    let moody = Moody {
        inner: http_service(&fake),
        pending: Arc::new(AtomicUsize::new(50)),
        fail_once: Arc::new(AtomicBool::new(false)),
    };
    let client = layer(&fake).layer(moody.clone());

    // Not ready for 50 polls: the caller waits, the login (on a clone) waits too, then both go.
    let response = client
        .clone()
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A readiness error reaches the caller as it is, and the service recovers after it.
    moody.fail_once.store(true, Ordering::SeqCst);
    let error = client
        .clone()
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "the connection pool is closed");
    let response = client
        .oneshot(get(fake.uri("/api/v1/flows")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 1);
}

/// A login endpoint that answers `head` and then never another byte.
async fn stalling_login(head: &'static str) -> http::Uri {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(head.as_bytes()).await;
                std::future::pending::<()>().await;
                drop(stream);
            });
        }
    });
    format!("http://{addr}/api/v1/login").parse().unwrap()
}

#[tokio::test]
async fn a_login_answer_larger_than_the_cap_is_refused_without_reading_it_all() {
    // Announces a gigabyte: refused from the header, before any of it is read.
    let announced = stalling_login(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n{",
    )
    .await;
    // Streams without end: refused once 64 KiB have come. The stream here is 65 KiB of spaces
    // in one chunk, then nothing: the answer cannot be waited out, only refused.
    let spaces: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n",
            65 * 1024,
            " ".repeat(65 * 1024)
        )
        .into_boxed_str(),
    );
    let streamed = stalling_login(spaces).await;
    let fake = FakePatchworks::start().await.unwrap();
    for login_url in [announced, streamed] {
        let client = patchworks_auth::AuthLayer::new(fake.credentials())
            .login_url(login_url.clone())
            .login_timeout(Duration::from_secs(20))
            .layer(fake.client());
        let error = tokio::time::timeout(
            Duration::from_secs(10),
            send(&client, get(login_url.clone())),
        )
        .await
        .expect("refused at once, not after the login timeout")
        .unwrap_err();
        assert!(auth_error(&error).is_malformed(), "{login_url}: {error}");
        assert!(error.to_string().contains("64 KiB"), "{error}");
    }
}

#[allow(dead_code)]
fn boxed(_: Pin<Box<dyn Future<Output = Response<()>>>>) {}
