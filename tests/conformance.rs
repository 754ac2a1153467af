//! Conformance against a real OAuth 2 server nobody on this project wrote: node-oidc-provider
//! (OpenID Certified), run by `ci/oauth-server/server.mjs` with the client credentials grant,
//! and an API that accepts its tokens on another origin (another port), trusted with
//! `AuthLayer::trust_origin`. `.ci/run` installs it (`npm ci` there); elsewhere these tests
//! are skipped, with a line saying so, when Node or the server's packages are missing.
//!
//! Against it: a cold burst (one token request), renewal of short-lived tokens, revocation, a
//! wrong secret, a scope granted and a scope refused, and a secret holding a space, `:`, `+` and
//! `%`, under both client authentication methods (Basic and the body).

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{test_util::HttpClient, Auth, AuthLayer, Credentials};
use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};
use tower::{Layer, ServiceExt};

/// The clients' secret: a space, `:`, `+`, `%` (and `%25`), as in `server.mjs`.
const SECRET: &str = "se cret:with+plus%25and%";

/// The server, stopped when dropped.
struct OAuthServer {
    child: Child,
    token_url: http::Uri,
    api: String,
}

impl OAuthServer {
    /// Starts one whose access tokens live `ttl`, or `None` outside CI when it is not
    /// installed (in CI it must be: a missing one fails).
    fn start(ttl: Duration) -> Option<OAuthServer> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/oauth-server");
        let installed = dir.join("node_modules/oidc-provider").exists();
        let node = Command::new("node").arg("--version").output().is_ok();
        if !(installed && node) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install the OAuth server (cd ci/oauth-server && npm ci)"
            );
            eprintln!("skipped: no OAuth server (cd ci/oauth-server && npm ci)");
            return None;
        }
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .env("TOKEN_TTL", ttl.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut words = line.split_whitespace().skip(1);
        let (Some(token_url), Some(api)) = (words.next(), words.next()) else {
            panic!("the OAuth server did not start: {line:?}");
        };
        Some(OAuthServer {
            token_url: token_url.parse().unwrap(),
            api: api.to_owned(),
            child,
        })
    }

    fn layer(&self, credentials: Credentials) -> AuthLayer {
        AuthLayer::new(credentials)
            .login_url(self.token_url.clone())
            .trust_origin(self.api.parse().unwrap())
    }

    fn client(&self, credentials: Credentials) -> Auth<HttpClient> {
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        self.layer(credentials).layer(http)
    }

    fn get(&self, path: &str) -> Request<Full<Bytes>> {
        let uri = format!("{}{path}", self.api);
        Request::get(uri).body(Full::default()).unwrap()
    }

    /// `(token requests, API calls, API 401s)` so far.
    fn stats(&self) -> (u64, u64, u64) {
        let body = self.admin("GET", "/admin/stats");
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        let n = |name: &str| stats[name].as_u64().unwrap();
        (n("token_requests"), n("api_calls"), n("unauthorized"))
    }

    /// Revokes every access token issued so far.
    fn revoke(&self) {
        self.admin("POST", "/admin/revoke");
    }

    fn admin(&self, method: &str, path: &str) -> String {
        let authority = self.api.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(authority).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: 0\r\n\
             connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn basic_client() -> Credentials {
    Credentials::client_credentials("conformance-basic", SECRET)
}

fn body_client() -> Credentials {
    Credentials::client_credentials("conformance-post", SECRET).client_secret_in_body()
}

async fn status(client: &Auth<HttpClient>, server: &OAuthServer, path: &str) -> StatusCode {
    client
        .clone()
        .oneshot(server.get(path))
        .await
        .unwrap()
        .status()
}

/// 200 requests at once, cold: one token request; then a revocation costs one more, and no
/// caller sees the 401. Under both client authentication methods, with a secret that holds a
/// space, `:`, `+` and `%`.
#[tokio::test]
async fn a_cold_burst_makes_one_token_request_and_a_revocation_one_more() {
    let Some(server) = OAuthServer::start(Duration::from_secs(3600)) else {
        return;
    };
    for (i, credentials) in [basic_client(), body_client()].into_iter().enumerate() {
        let client = server.client(credentials);
        let before = server.stats().0;
        let requests = (0..200).map(|n| client.clone().oneshot(server.get(&format!("/api/{n}"))));
        let answers = futures_util::future::join_all(requests).await;
        let statuses: Vec<_> = answers.into_iter().map(|a| a.unwrap().status()).collect();
        support::assert_all_ok(&statuses);
        assert_eq!(
            server.stats().0 - before,
            1,
            "client {i}: one token request"
        );

        server.revoke();
        assert_eq!(
            status(&client, &server, "/api/orders").await,
            StatusCode::OK
        );
        let (tokens, _, unauthorized) = server.stats();
        assert_eq!(
            tokens - before,
            2,
            "client {i}: one more after the revocation"
        );
        assert_eq!(
            unauthorized,
            i as u64 + 1,
            "the revocation's one 401, replayed"
        );
    }
}

/// Tokens that live 4 s, renewed in the background (from half their life): requests go on
/// through two renewals without a failure, and none is refused for an expired token.
#[tokio::test]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let Some(server) = OAuthServer::start(Duration::from_secs(4)) else {
        return;
    };
    let client = server.client(basic_client());
    let mut watch = client.watch();
    assert_eq!(
        status(&client, &server, "/api/orders").await,
        StatusCode::OK
    );
    let first = watch.borrow_and_update().obtained_at;
    let mut renewals = 0;
    let mut sent = 0;
    // Until two renewals have happened (events), bounded: 20 s is five lifetimes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = first;
    while renewals < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{renewals} renewals"
        );
        assert_eq!(
            status(&client, &server, "/api/orders").await,
            StatusCode::OK
        );
        sent += 1;
        let now = watch.borrow_and_update().obtained_at;
        if now != last {
            renewals += 1;
            last = now;
        }
        // Paced by the server's answers; a short pause keeps the loop from spinning.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tokens, calls, unauthorized) = server.stats();
    assert_eq!(
        unauthorized, 0,
        "no request met an expired token ({calls} calls)"
    );
    assert_eq!(
        tokens, 3,
        "the first token and two renewals ({sent} requests)"
    );
}

/// A wrong secret: a rejected client with the server's §5.2 code, at once, and a storm of
/// calls makes one token request.
#[tokio::test]
async fn a_wrong_secret_is_rejected_once_for_a_storm() {
    let Some(server) = OAuthServer::start(Duration::from_secs(3600)) else {
        return;
    };
    let wrong = Credentials::client_credentials("conformance-basic", "not the secret");
    let client = server.client(wrong);
    let calls = (0..20).map(|n| client.clone().oneshot(server.get(&format!("/api/{n}"))));
    for result in futures_util::future::join_all(calls).await {
        let error = result.unwrap_err();
        let error = error.downcast_ref::<patchworks_auth::Error>().unwrap();
        assert!(error.is_rejected(), "{error}");
        assert_eq!(error.oauth_error(), Some("invalid_client"));
        assert!(!error.to_string().contains("not the secret"), "{error}");
    }
    assert_eq!(
        server.stats(),
        (1, 0, 0),
        "one token request, nothing sent to the API"
    );
}

/// A scope the client may have is granted, and said in the state; one it may not have is
/// refused with `invalid_scope`, which is no rejected client.
#[tokio::test]
async fn a_scope_granted_and_a_scope_refused() {
    let Some(server) = OAuthServer::start(Duration::from_secs(3600)) else {
        return;
    };
    let client = server.client(basic_client().scope("orders:read"));
    assert_eq!(
        status(&client, &server, "/api/orders").await,
        StatusCode::OK
    );
    assert_eq!(client.state().granted_scope.as_deref(), Some("orders:read"));

    let refused = Credentials::client_credentials("conformance-post", SECRET)
        .client_secret_in_body()
        .scope("orders:write");
    let client = server.client(refused);
    let error = client
        .clone()
        .oneshot(server.get("/api/orders"))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<patchworks_auth::Error>().unwrap();
    assert_eq!(error.oauth_error(), Some("invalid_scope"), "{error}");
    assert!(!error.is_rejected());
}
