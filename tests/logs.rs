//! What the layer logs: enough to follow a login and a 401, never a secret.
//!
//! A test binary of its own: `tracing` decides once per process whether a log line is wanted,
//! so tests in parallel without a subscriber would silence these.

mod support;

use http::StatusCode;
use patchworks_auth::{
    store::RedisStore,
    test_util::{FakePatchworks, CLIENT_ID, CLIENT_SECRET},
    AuthLayer, Credentials,
};
use std::sync::{Arc, Mutex};
use support::*;
use tower::Layer;

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A subscriber writing lines up to `level` into the [`Captured`] buffer it returns.
fn capture(level: tracing::Level) -> (Captured, impl tracing::Subscriber + Send + Sync) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .finish();
    (captured, subscriber)
}

/// Runs `test` on a current-thread runtime with its logs up to `level` captured: its output,
/// and the logs.
fn logged<F: std::future::Future>(level: tracing::Level, test: F) -> (F::Output, String) {
    let (captured, subscriber) = capture(level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let output = tracing::subscriber::with_default(subscriber, || runtime.block_on(test));
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (output, logs)
}

#[test]
fn logs_tell_what_happened_and_never_a_secret() {
    let (captured, subscriber) = capture(tracing::Level::DEBUG);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let fake = FakePatchworks::start().await.unwrap();
            let client = client(&fake);
            assert_eq!(
                status(&client, &fake, "/api/v1/flows").await,
                StatusCode::OK
            );
            fake.revoke_tokens();
            assert_eq!(
                status(&client, &fake, "/api/v1/flows").await,
                StatusCode::OK
            );
            let wrong = AuthLayer::new(Credentials::new("ops@example.com", "wrong-password-42"))
                .login_url(fake.login_url())
                .layer(fake.client());
            send(&wrong, get(fake.uri("/api/v1/flows")))
                .await
                .unwrap_err();
            let token = last_api_authorization(&fake).unwrap();

            // A store that is down (nothing listens on port 1): every request still succeeds,
            // and the outage is told once, however many logins go without the store.
            let store = RedisStore::new("redis://:redis-secret-9@127.0.0.1:1/").unwrap();
            assert!(!format!("{store:?}").contains("redis-secret-9"));
            let stored = support::layer(&fake).store(store).layer(fake.client());
            for _ in 0..3 {
                assert_eq!(
                    status(&stored, &fake, "/api/v1/flows").await,
                    StatusCode::OK
                );
                fake.revoke_tokens();
            }
            let state = stored.state();
            assert_eq!((state.logins, state.store_outages), (3, 1));

            // OAuth 2 client credentials: one token request, then a client refused.
            let oauth = AuthLayer::new(fake.client_credentials())
                .login_url(fake.token_url())
                .layer(fake.client());
            oauth.login().await.unwrap();
            let refused = Credentials::client_credentials(CLIENT_ID, "wrong-client-secret-7");
            let refused = AuthLayer::new(refused)
                .login_url(fake.token_url())
                .layer(fake.client());
            assert!(refused.login().await.unwrap_err().is_rejected());
            token
        })
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        logs.matches("token store unavailable").count(),
        1,
        "one warning per outage in\n{logs}"
    );
    // One line per login outcome and per discarded token: two logins and a revocation, one
    // rejected login, three logins and two revocations beside the store, then a token request
    // and a refused client.
    let lines = |text: &str| logs.lines().filter(|line| line.contains(text)).count();
    assert_eq!(
        lines("logged in to Patchworks"),
        6,
        "one line a login in\n{logs}"
    );
    assert_eq!(
        lines("Patchworks login failed"),
        2,
        "one line a failure in\n{logs}"
    );
    let named = logs
        .lines()
        .filter(|line| line.contains("form=\"client_credentials\""))
        .filter(|line| line.contains("logged in to") || line.contains("login failed"))
        .count();
    assert_eq!(named, 2, "the form named in\n{logs}");
    assert_eq!(
        lines("API answered 401: token discarded"),
        3,
        "one line a discarded token in\n{logs}"
    );
    for expected in [
        "patchworks_login",
        "reason=\"first_use\"",
        "logged in to Patchworks",
        "API answered 401: token discarded",
        "reason=\"unauthorized\"",
        "replaying the request",
        "Patchworks login failed",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in\n{logs}");
    }
    let token = token.strip_prefix("Bearer ").unwrap();
    for secret in [
        patchworks_auth::test_util::PASSWORD,
        "wrong-password-42",
        "redis-secret-9",
        CLIENT_SECRET,
        "client+secret",
        "wrong-client-secret-7",
        token,
    ] {
        assert!(!logs.contains(secret), "{secret:?} leaked into\n{logs}");
    }
}

/// A token endpoint that answers every request with `status` and `body` (JSON), telling each
/// answer to `answered`.
async fn echoing_endpoint(status: &'static str, body: String) -> http::Uri {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/oauth/token").parse().unwrap()
}

/// Every form of a client secret that the layer sends (raw, form-encoded, percent-encoded in
/// either case, the Basic value, JSON-escaped), echoed back by a token endpoint in its RFC 6749
/// §5.2 fields, in other fields and in HTML: none comes back in the error's `Display` or
/// `Debug`, `state()`, a log line at TRACE or a metric. The forms are written out here, not
/// computed by the code under test.
#[test]
fn a_secret_echoed_back_in_any_encoding_stays_out_of_every_output() {
    use base64::Engine as _;
    const ID: &str = "Acme-Inbound-7f3K";
    const SECRET: &str = "Qz9+kT/w \"q\\ é5%:x";
    let percent = |text: &str, upper: bool| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                b if upper => format!("%{b:02X}"),
                b => format!("%{b:02x}"),
            })
            .collect()
    };
    let base64 = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    let forms = [
        SECRET.to_owned(),
        "Qz9%2BkT%2Fw+%22q%5C+%C3%A95%25%3Ax".to_owned(),
        percent(SECRET, true),
        percent(SECRET, false),
        base64(format!("{ID}:{}", percent(SECRET, true))),
        base64(format!("{ID}:Qz9%2BkT%2Fw+%22q%5C+%C3%A95%25%3Ax")),
        base64(format!("{ID}:{SECRET}")),
        r#"Qz9+kT/w \"q\\ é5%:x"#.to_owned(),
        r#"Qz9+kT\/w \"q\\ \u00e95%:x"#.to_owned(),
    ];
    let (captured, subscriber) = capture(tracing::Level::TRACE);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut shown = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        let _local = metrics::set_default_local_recorder(&recorder);
        runtime.block_on(async {
            let fake = FakePatchworks::start().await.unwrap();
            for form in &forms {
                let json = |text: &str| serde_json::to_string(text).unwrap();
                let echo = format!("the request had {form} in it");
                for (status, body) in [
                    (
                        "400 Bad Request",
                        format!(
                            r#"{{"error":"invalid_request","error_description":{},"echo":{}}}"#,
                            json(&echo),
                            json(form)
                        ),
                    ),
                    (
                        "401 Unauthorized",
                        format!(
                            r#"{{"error":{},"error_description":{}}}"#,
                            json(form),
                            json(form)
                        ),
                    ),
                    ("401 Unauthorized", format!("<html><p>{form}</p></html>")),
                    (
                        "403 Forbidden",
                        format!(r#"{{"message":{},"detail":{}}}"#, json(form), json(&echo)),
                    ),
                ] {
                    let url = echoing_endpoint(status, body).await;
                    let client = AuthLayer::new(Credentials::client_credentials(ID, SECRET))
                        .login_url(url)
                        .layer(fake.client());
                    let error = client.login().await.unwrap_err();
                    shown.push(format!("{error}\n{error:?}\n{:?}", client.state()));
                    if let Some(last) = client.state().last_error {
                        shown.push(last.to_string());
                    }
                }
            }
        })
    });
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        shown.push(format!("{key:?} {value:?}"));
    }
    shown.push(String::from_utf8(captured.0.lock().unwrap().clone()).unwrap());
    let shown = shown.join("\n");
    assert!(
        shown.contains("the request had <redacted> in it"),
        "{shown}"
    );
    assert!(shown.contains("invalid_request"), "{shown}");
    for form in &forms {
        assert!(
            !shown
                .to_ascii_lowercase()
                .contains(&form.to_ascii_lowercase()),
            "{form:?} leaked into\n{shown}"
        );
    }
}

/// The one configuration rule (crate docs, "Configuration errors"), for every builder input
/// that can be wrong: one ERROR line where the layer is put to use (however many services it
/// makes, and none for the builder's steps on the way), `is_config()` from `login()` and
/// from a request with nothing sent, and the same error from the `try_` form
/// (`AuthLayer::check_config` where the input has none of its own).
#[test]
fn every_input_that_can_be_wrong_is_logged_where_built_and_refused_unsent() {
    use patchworks_auth::{budget::Budget, store::FileStore, Error};
    use std::time::Duration;
    type Build = Box<dyn Fn(&FakePatchworks) -> AuthLayer>;
    type Try = Box<dyn Fn(&FakePatchworks) -> Result<(), Error>>;
    let with_url = |credentials: Credentials| -> Build {
        Box::new(move |fake| AuthLayer::new(credentials.clone()).login_url(fake.login_url()))
    };
    let checked = |build: fn(&FakePatchworks) -> AuthLayer| -> (Build, Try) {
        (
            Box::new(build),
            Box::new(move |fake| build(fake).check_config()),
        )
    };
    let key = |key: &'static str| -> (Build, Try) {
        (
            with_url(Credentials::api_key(key)),
            Box::new(move |_| Credentials::try_api_key(key).map(drop)),
        )
    };
    let url = |url: &'static str| -> (Build, Try) {
        let parse = move || url.parse::<http::Uri>().unwrap();
        (
            Box::new(move |fake| AuthLayer::new(fake.credentials()).login_url(parse())),
            Box::new(move |fake| {
                AuthLayer::new(fake.credentials())
                    .try_login_url(parse())
                    .map(drop)
            }),
        )
    };
    let cases: Vec<(&str, (Build, Try))> = vec![
        ("an API key with CR/LF", key("pk_live\r\nX-Evil: 1")),
        ("an API key of spaces", key("   ")),
        ("an empty API key", key("")),
        (
            "an empty email",
            checked(|fake| AuthLayer::new(Credentials::new("", "pw")).login_url(fake.login_url())),
        ),
        (
            "an empty password",
            checked(|fake| {
                AuthLayer::new(Credentials::new("ops@example.com", "")).login_url(fake.login_url())
            }),
        ),
        (
            "an empty username",
            checked(|fake| {
                AuthLayer::new(Credentials::username(" ", "pw")).login_url(fake.login_url())
            }),
        ),
        (
            "an empty client secret",
            checked(|fake| {
                AuthLayer::new(Credentials::client_credentials(CLIENT_ID, ""))
                    .login_url(fake.token_url())
            }),
        ),
        (
            "client credentials without a token URL",
            checked(|fake| AuthLayer::new(fake.client_credentials())),
        ),
        (
            "a plain-text login URL",
            url("http://staging.example.com/api/v1/login"),
        ),
        ("a relative login URL", url("/api/v1/login")),
        (
            "a login URL with a password",
            url("https://ops:pw@svc-fabric.pwks.co/api/v1/login"),
        ),
        (
            "a budget of zero",
            (
                Box::new(|fake| {
                    support::layer(fake).budget(Budget::new(0, Duration::from_secs(60)))
                }),
                Box::new(|_| Budget::try_new(0, Duration::from_secs(60)).map(drop)),
            ),
        ),
        (
            "a budget over no time",
            (
                Box::new(|fake| support::layer(fake).budget(Budget::new(10, Duration::ZERO))),
                Box::new(|_| Budget::try_new(10, Duration::ZERO).map(drop)),
            ),
        ),
        (
            "a zero login timeout",
            checked(|fake| support::layer(fake).login_timeout(Duration::ZERO)),
        ),
        (
            "a store with a zero timeout",
            checked(|fake| {
                let path = std::env::temp_dir().join("patchworks-config-never-written");
                support::layer(fake)
                    .store(FileStore::new(path))
                    .store_timeout(Duration::ZERO)
            }),
        ),
    ];
    let (captured, subscriber) = capture(tracing::Level::DEBUG);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            for (what, (build, tried)) in &cases {
                let fake = FakePatchworks::start().await.unwrap();
                captured.0.lock().unwrap().clear();
                let layer = build(&fake);
                let client = layer.layer(fake.client());
                let _another = layer.layer(fake.client());
                let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
                assert_eq!(
                    logs.matches(" ERROR ").count(),
                    1,
                    "{what}: one ERROR line where the layer is put to use:\n{logs}"
                );
                let login = client.login::<http_body_util::Full<bytes::Bytes>>().await;
                let login = login.unwrap_err();
                assert!(login.is_config(), "{what}: {login}");
                let error = layer_error(&client, &fake, "/api/v1/flows").await;
                assert!(error.is_config(), "{what}: {error}");
                assert_eq!(fake.seen().len(), 0, "{what}: nothing sent");
                let tried = tried(&fake).unwrap_err();
                assert!(tried.is_config(), "{what}: {tried}");
                assert_eq!(tried.to_string(), error.to_string(), "{what}");
                assert!(
                    logs.contains(&error.to_string()),
                    "{what}: the line tells it:\n{logs}"
                );
                for secret in ["pk_live", "X-Evil", ":pw@"] {
                    assert!(!logs.contains(secret), "{what}: {secret} in\n{logs}");
                }
            }
        })
    });
}

/// A request that goes through untouched because its origin is not trusted is said at DEBUG,
/// once a minute at most, naming the origin and what would trust it.
#[test]
fn a_request_to_an_untrusted_origin_is_said_at_debug_once() {
    let ((), logs) = logged(tracing::Level::DEBUG, async {
        {
            let fake = FakePatchworks::start().await.unwrap();
            let elsewhere = FakePatchworks::start().await.unwrap();
            let client = client(&fake);
            for _ in 0..3 {
                let response = send(&client, get(elsewhere.uri("/api/v1/flows"))).await;
                assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
            }
        }
    });
    let told = logs
        .lines()
        .filter(|line| line.contains("origin is not trusted"))
        .count();
    assert_eq!(told, 1, "once in\n{logs}");
    assert!(logs.contains("origin=http://127.0.0.1"), "{logs}");
    assert!(logs.contains("AuthLayer::trust_origin"), "{logs}");
}

/// A scope granted narrower than the one asked for is told at WARN, once for the layer, naming
/// what is missing.
#[test]
fn a_narrower_scope_is_told_once() {
    let ((), logs) = logged(tracing::Level::DEBUG, async {
        {
            let fake = FakePatchworks::start().await.unwrap();
            let body = r#"{"access_token":"abc","token_type":"Bearer","expires_in":3600,"scope":"flows:read"}"#;
            let url = echoing_endpoint("200 OK", body.to_owned()).await;
            let credentials = Credentials::client_credentials(CLIENT_ID, "s3cret")
                .scope("flows:read flows:write");
            // An API that refuses the token ("abc" is not the fake's): a 401 renews it.
            let origin = format!("http://{}", fake.addr()).parse().unwrap();
            let client = AuthLayer::new(credentials)
                .login_url(url)
                .trust_origin(origin)
                .layer(fake.client());
            let response = send(&client, get(fake.uri("/api/v1/flows"))).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert!(client.state().logins >= 2, "{:?}", client.state());
        }
    });
    let told = logs
        .lines()
        .filter(|line| line.contains("narrower scope"))
        .count();
    assert_eq!(told, 1, "once in\n{logs}");
    assert!(logs.contains("missing=flows:write"), "{logs}");
}
