//! OAuth 2 client credentials (RFC 6749 §4.4) through the same core as the other logins: the
//! token request byte for byte, the answer (§5.1) and its errors (§5.2), one token request for a
//! cold burst, renewal before expiry, a revocation recovered, and the secret kept out of sight.

mod support;

use base64::Engine as _;
use http::StatusCode;
use patchworks_auth::{
    store::FileStore,
    test_util::{hold_clock, FakePatchworks, CLIENT_ID, CLIENT_SECRET, TOKEN_PATH},
    AuthLayer, Credentials,
};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

/// The secret as the form encodes it (RFC 6749 appendix B), as Basic's parts are encoded (a
/// space as `%20`, which percent and form decoders both read as a space), and the Basic
/// credentials of the fake's client: written out here, not computed by the code under test.
const SECRET_FORM_ENCODED: &str = "client+secret%2Fwith%3Aodd%26chars%3D";
const SECRET_PERCENT_ENCODED: &str = "client%20secret%2Fwith%3Aodd%26chars%3D";

fn basic() -> String {
    let pair = format!("{CLIENT_ID}:{SECRET_PERCENT_ENCODED}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn oauth_client(fake: &FakePatchworks, credentials: Credentials) -> Client {
    AuthLayer::new(credentials)
        .login_url(fake.token_url())
        .layer(fake.client())
}

#[tokio::test]
async fn the_token_request_is_rfc_6749_s_4_4_byte_for_byte() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = oauth_client(&fake, fake.client_credentials().scope("flows:read write"));
    expect_status(&client, &fake, "/v1/acme/orders", StatusCode::OK).await;
    let seen = fake.seen();
    let token = &seen[0];
    assert_eq!(token.method, http::Method::POST);
    assert_eq!(token.path, TOKEN_PATH);
    assert_eq!(
        token.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(token.authorization.as_deref(), Some(basic().as_str()));
    assert_eq!(
        &token.body[..],
        b"grant_type=client_credentials&scope=flows%3Aread+write"
    );
    // The access token goes to the API as a bearer token.
    let api = &seen[1];
    assert_eq!(api.path, "/v1/acme/orders");
    assert!(api.authorization.as_deref().unwrap().starts_with("Bearer "));
    assert_eq!((fake.logins(), fake.unauthorized()), (1, 0));

    // The client in the body instead, for a server that wants it there; no scope.
    let fake = FakePatchworks::start().await.unwrap();
    let client = oauth_client(&fake, fake.client_credentials().client_secret_in_body());
    expect_status(&client, &fake, "/v1/acme/orders", StatusCode::OK).await;
    let token = &fake.seen()[0];
    assert_eq!(token.authorization, None);
    let body = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={SECRET_FORM_ENCODED}"
    );
    assert_eq!(&token.body[..], body.as_bytes());
}

#[tokio::test]
async fn an_invalid_client_is_a_rejected_login_that_says_why_without_the_secret() {
    let fake = FakePatchworks::start().await.unwrap();
    let wrong = Credentials::client_credentials(CLIENT_ID, "wrong-secret-42");
    let client = oauth_client(&fake, wrong);
    let error = layer_error(&client, &fake, "/v1/acme/orders").await;
    assert!(error.is_rejected(), "{error}");
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
    let message = error.to_string();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(
        message.contains("Client authentication failed."),
        "{message}"
    );
    assert!(
        message.contains("Credentials::client_credentials"),
        "{message}"
    );
    for shown in [message, format!("{error:?}")] {
        assert!(!shown.contains("wrong-secret-42"), "{shown}");
    }
    assert_eq!(fake.api_calls(), 0, "nothing sent to the API");
}

/// A token endpoint that answers every request with `answer`, a whole HTTP/1.1 response.
async fn token_endpoint(answer: String) -> http::Uri {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/token").parse().unwrap()
}

fn http_answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn error_answers_and_other_token_types_are_told_apart() {
    let fake = FakePatchworks::start().await.unwrap();
    let secret = "s3cret-echoed";
    let cases = [
        // §5.2, the description echoing the secret: told, with the secret redacted.
        (
            http_answer(
                "400 Bad Request",
                r#"{"error":"unauthorized_client","error_description":"client s3cret-echoed may not"}"#,
            ),
            true,
            "\"unauthorized_client\": client <redacted> may not",
        ),
        // Another §5.2 error: not the client's credentials, a fix of the request.
        (
            http_answer("400 Bad Request", r#"{"error":"invalid_scope"}"#),
            false,
            "invalid_scope",
        ),
        // §5.1 with a token type the layer cannot send.
        (
            http_answer(
                "200 OK",
                r#"{"access_token":"abc","token_type":"mac","expires_in":3600}"#,
            ),
            false,
            "\"token_type\" is not \"Bearer\"",
        ),
        // `token` instead of `access_token`: not an OAuth 2 answer.
        (
            http_answer("200 OK", r#"{"token":"abc","token_type":"Bearer"}"#),
            false,
            "no \"access_token\"",
        ),
    ];
    for (answer, rejected, expected) in cases {
        let client = AuthLayer::new(Credentials::client_credentials(CLIENT_ID, secret))
            .login_url(token_endpoint(answer).await)
            .layer(fake.client());
        let error = client.login().await.unwrap_err();
        let message = error.to_string();
        assert_eq!(error.is_rejected(), rejected, "{message}");
        assert!(message.contains(expected), "{expected:?} in {message}");
        assert!(!message.contains(secret), "{message}");
    }

    // `Bearer` in any case, and no `expires_in`: a day, as for the email login.
    let answer = http_answer("200 OK", r#"{"access_token":"abc","token_type":"bEaReR"}"#);
    let client = AuthLayer::new(Credentials::client_credentials(CLIENT_ID, secret))
        .login_url(token_endpoint(answer).await)
        .layer(fake.client());
    client.login().await.unwrap();
    let state = client.state();
    let lifetime = state.expires_at.unwrap() - state.obtained_at.unwrap();
    assert_eq!(lifetime, Duration::from_secs(24 * 60 * 60));
}

/// A token endpoint that answers its requests with `answers` in turn (the last one again once
/// they run out), and counts them.
async fn sequenced_endpoint(
    answers: Vec<String>,
) -> (http::Uri, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{atomic::Ordering, Arc};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let answer = answers[n.min(answers.len() - 1)].clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/token").parse().unwrap(), count)
}

/// RFC 6749 §5.2 lets a server answer a failed client authentication with 401 (and
/// `WWW-Authenticate: Basic`): whatever its body, that is a rejected client, and the message
/// says what the server said.
#[tokio::test]
async fn a_401_from_the_token_endpoint_is_a_rejected_client_whatever_its_body() {
    let fake = FakePatchworks::start().await.unwrap();
    let challenge = |body: &str| {
        format!(
            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"oauth\"\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (answer, told) in [
        (challenge(""), "no RFC 6749 error code"),
        (
            challenge("<html>Unauthorized</html>"),
            "no RFC 6749 error code",
        ),
        (
            http_answer("401 Unauthorized", r#"{"message":"Unauthorized"}"#),
            "no RFC 6749 error code",
        ),
        (
            http_answer("401 Unauthorized", r#"{"error":"invalid_client"}"#),
            "error \"invalid_client\"",
        ),
        (
            http_answer("400 Bad Request", r#"{"error":"invalid_client"}"#),
            "error \"invalid_client\"",
        ),
    ] {
        let client = AuthLayer::new(Credentials::client_credentials(CLIENT_ID, "s3cret"))
            .login_url(token_endpoint(answer).await)
            .layer(fake.client());
        let error = client.login().await.unwrap_err();
        assert!(error.is_rejected(), "{error}");
        let message = error.to_string();
        assert!(message.contains(told), "{told:?} in {message}");
        assert!(
            message.contains("Credentials::client_credentials"),
            "{message}"
        );
    }
    // A 400 with no §5.2 error is not the client's credentials.
    let answer = http_answer("400 Bad Request", "nonsense");
    let client = AuthLayer::new(Credentials::client_credentials(CLIENT_ID, "s3cret"))
        .login_url(token_endpoint(answer).await)
        .layer(fake.client());
    let error = client.login().await.unwrap_err();
    assert!(!error.is_rejected(), "{error}");
    assert_eq!(error.oauth_error(), None);
    assert!(
        error
            .to_string()
            .contains("HTTP 400, no RFC 6749 error code"),
        "{error}"
    );
}

/// `temporarily_unavailable` and `server_error` (RFC 6749 §4.1.2.1), with a 400 or a 503, are
/// retried inside the login as a 503 is; the code is readable with `oauth_error()`.
#[tokio::test]
async fn temporarily_unavailable_and_server_error_are_retried_inside_the_login() {
    let fake = FakePatchworks::start().await.unwrap();
    let ok = http_answer(
        "200 OK",
        r#"{"access_token":"abc","token_type":"Bearer","expires_in":3600}"#,
    );
    for status in ["400 Bad Request", "503 Service Unavailable"] {
        for code in ["temporarily_unavailable", "server_error"] {
            let busy = http_answer(status, &format!(r#"{{"error":"{code}"}}"#));
            let (url, count) = sequenced_endpoint(vec![busy, ok.clone()]).await;
            let client = AuthLayer::new(Credentials::client_credentials(CLIENT_ID, "s3cret"))
                .login_url(url)
                .layer(fake.client());
            client.login().await.unwrap();
            assert_eq!(
                count.load(std::sync::atomic::Ordering::SeqCst),
                2,
                "{status} {code}"
            );
        }
    }
    // Busy for longer than the login timeout (its `Retry-After`): the login fails at once, and
    // the error says so, with the code.
    let body = r#"{"error":"temporarily_unavailable"}"#;
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 3600\r\ncontent-type: \
         application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (url, count) = sequenced_endpoint(vec![busy]).await;
    let client = AuthLayer::new(Credentials::client_credentials(CLIENT_ID, "s3cret"))
        .login_url(url)
        .layer(fake.client());
    let error = client.login().await.unwrap_err();
    assert_eq!(
        error.oauth_error(),
        Some("temporarily_unavailable"),
        "{error}"
    );
    assert!(!error.is_rejected());
    assert!(error.to_string().contains("cannot serve now"), "{error}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

    let scope = http_answer("400 Bad Request", r#"{"error":"invalid_scope"}"#);
    let client = AuthLayer::new(Credentials::client_credentials(CLIENT_ID, "s3cret"))
        .login_url(token_endpoint(scope).await)
        .layer(fake.client());
    let error = client.login().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_scope"));
}

#[tokio::test]
async fn without_a_token_url_every_request_fails_with_a_configuration_error() {
    let fake = FakePatchworks::start().await.unwrap();
    let client = AuthLayer::new(fake.client_credentials()).layer(fake.client());
    let error = client.login().await.unwrap_err();
    assert!(error.is_config(), "{error}");
    assert!(error.to_string().contains("login_url"), "{error}");
}

/// On a paused clock (I/O in `hold_clock`): one token request for 10,000 cold requests (sent
/// 100 at a time by a concurrency limit below the layer), a renewal before expiry, and a
/// revocation recovered with one token request and a replay.
#[tokio::test(start_paused = true)]
async fn one_token_request_for_a_cold_burst_then_renewal_and_revocation() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3600));
    let inner = tower::ServiceBuilder::new()
        .concurrency_limit(100)
        .service(http_service(&fake));
    let client = AuthLayer::new(fake.client_credentials())
        .login_url(fake.token_url())
        .layer(inner);
    let send = |path: String| client.clone().oneshot(get(fake.uri(&path)));
    let requests = (0..10_000).map(|i| send(format!("/v1/acme/orders/{i}")));
    let responses = hold_clock(futures_util::future::join_all(requests)).await;
    assert!(responses
        .iter()
        .all(|response| response.as_ref().unwrap().status() == StatusCode::OK));
    assert_eq!(fake.logins(), 1, "one token request");
    assert_eq!(fake.api_calls(), 10_000);

    // Into the renewal window (5 minutes before expiry): renewed in the background.
    let mut watch = client.watch();
    let first = watch.borrow_and_update().obtained_at;
    tokio::time::sleep(Duration::from_secs(3600 - 200)).await;
    let response = hold_clock(send("/v1/acme/orders".into())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    hold_clock(watch.wait_for(|state| state.obtained_at > first))
        .await
        .unwrap();
    assert_eq!(fake.logins(), 2, "renewed before expiry");
    assert_eq!(fake.expired_tokens_seen(), 0);

    // A revocation: one token request and a replay.
    fake.revoke_tokens();
    let calls = fake.api_calls();
    let response = hold_clock(send("/v1/acme/orders".into())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.logins(), 3, "one token request after the revocation");
    assert_eq!(fake.api_calls() - calls, 2, "the 401 and its replay");
    assert_eq!(fake.unauthorized(), 1);
}

#[tokio::test]
async fn the_secret_is_in_no_debug_error_or_stored_file() {
    let fake = FakePatchworks::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("patchworks-oauth-{}", std::process::id()));
    let credentials = fake.client_credentials().scope("flows");
    let layer = AuthLayer::new(credentials.clone())
        .login_url(fake.token_url())
        .store(FileStore::new(dir.join("token")));
    let client = layer.layer(fake.client());
    expect_status(&client, &fake, "/v1/acme/orders", StatusCode::OK).await;
    // A second process's layer on the same store takes the stored token: no token request.
    let again = AuthLayer::new(credentials.clone())
        .login_url(fake.token_url())
        .store(FileStore::new(dir.join("token")))
        .layer(fake.client());
    expect_status(&again, &fake, "/v1/acme/orders", StatusCode::OK).await;
    assert_eq!(fake.logins(), 1);

    let token = last_api_authorization(&fake).unwrap();
    let token = token.strip_prefix("Bearer ").unwrap();
    let secrets = [
        CLIENT_SECRET,
        SECRET_FORM_ENCODED,
        SECRET_PERCENT_ENCODED,
        &basic()[6..],
        token,
    ];
    let mut shown = vec![
        format!("{credentials:?}"),
        format!("{layer:?}"),
        format!("{:?}", client.state()),
    ];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        shown.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for text in &shown {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Two client ids that differ only in case are two clients to a token endpoint (it compares
/// them byte for byte): on one store they keep two entries and two API budgets.
#[tokio::test]
async fn client_ids_that_differ_in_case_keep_two_entries_and_two_budgets() {
    use patchworks_auth::budget::Budget;
    let fake = FakePatchworks::start().await.unwrap();
    fake.add_client("Acme-Inbound-7f3K", "first-secret");
    fake.add_client("acme-inbound-7f3k", "second-secret");
    let dir = std::env::temp_dir().join(format!("patchworks-case-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Each is a process of its own: a layer, on the same file.
    let process = |id: &str, secret: &str| {
        AuthLayer::new(Credentials::client_credentials(id, secret))
            .login_url(fake.token_url())
            .store(FileStore::new(dir.join("token")))
            .budget(Budget::new(3, Duration::from_secs(60)).max_wait(Duration::from_millis(500)))
            .layer(fake.client())
    };
    let first = process("Acme-Inbound-7f3K", "first-secret");
    // The first spends its whole budget: its login and two calls.
    for _ in 0..2 {
        expect_status(&first, &fake, "/v1/acme/orders", StatusCode::OK).await;
    }
    let second = process("acme-inbound-7f3k", "second-secret");
    expect_status(&second, &fake, "/v1/acme/orders", StatusCode::OK).await;
    assert_eq!(
        second.budget_state().waited,
        0,
        "the second has a budget of its own"
    );
    assert_eq!(fake.logins(), 2, "one login each");
    // Another process of each takes its own client's token from the store: no login.
    for (id, secret) in [
        ("Acme-Inbound-7f3K", "first-secret"),
        ("acme-inbound-7f3k", "second-secret"),
    ] {
        let again = process(id, secret);
        again.login().await.unwrap();
        let _ = again;
    }
    assert_eq!(fake.logins(), 2, "each took its own entry");
    let _ = std::fs::remove_dir_all(dir);
}

/// The scope the token endpoint granted is in `TokenState`: what its answer says, or the scope
/// asked for when it says nothing (RFC 6749 §5.1).
#[tokio::test]
async fn the_granted_scope_is_in_the_state() {
    let fake = FakePatchworks::start().await.unwrap();
    let asked = "flows:read flows:write";
    for (body, granted) in [
        (
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":3600,"scope":"flows:read"}"#,
            "flows:read",
        ),
        (
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":3600}"#,
            asked,
        ),
    ] {
        let client =
            AuthLayer::new(Credentials::client_credentials(CLIENT_ID, "s3cret").scope(asked))
                .login_url(token_endpoint(http_answer("200 OK", body)).await)
                .layer(fake.client());
        client.login().await.unwrap();
        assert_eq!(
            client.state().granted_scope.as_deref(),
            Some(granted),
            "{body}"
        );
    }
    // The other forms have none.
    let client = client(&fake);
    flows_ok(&client, &fake).await;
    assert_eq!(client.state().granted_scope, None);
}

/// The Inbound API's token request, as Patchworks documents it: a `GET`, `grant_type` and the
/// scope in the query, the client in HTTP Basic, never in the URL.
#[tokio::test]
async fn the_inbound_get_puts_the_form_in_the_query_and_the_client_in_basic() {
    let fake = FakePatchworks::start().await.unwrap();
    let credentials = fake
        .client_credentials()
        .scope("orders:write")
        .inbound_get();
    let client = oauth_client(&fake, credentials);
    expect_status(&client, &fake, "/v1/acme/orders", StatusCode::OK).await;
    let token = &fake.seen()[0];
    assert_eq!(token.method, http::Method::GET);
    assert_eq!(token.path, TOKEN_PATH);
    assert_eq!(token.authorization.as_deref(), Some(basic().as_str()));
    assert!(token.body.is_empty());
    let query = token.query.as_deref();
    assert_eq!(
        query,
        Some("grant_type=client_credentials&scope=orders%3Awrite")
    );
    assert_eq!(fake.logins(), 1);
    // What the request line carried: no secret in it.
    let line = format!("{:?}", fake.seen()[0]);
    for secret in [CLIENT_SECRET, SECRET_FORM_ENCODED, SECRET_PERCENT_ENCODED] {
        assert!(!line.contains(secret), "{line}");
    }
}
