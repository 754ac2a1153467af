//! OAuth 2 client credentials, as the Patchworks Inbound API (and any RFC 6749 token endpoint)
//! issues them: `Credentials::client_credentials` with the token endpoint as the login URL.
//!
//! ```text
//! cargo run --example inbound
//! ```
//!
//! Runs against the embedded fake's token endpoint on loopback: one token request for ten
//! concurrent calls, a revocation recovered by one token request and a replay. With
//! `PATCHWORKS_CLIENT_ID`, `PATCHWORKS_CLIENT_SECRET`, `PATCHWORKS_TOKEN_URL` and
//! `PATCHWORKS_INBOUND_URL` set (and `PATCHWORKS_SCOPE` if the endpoint wants one), it sends one
//! `GET` to that URL through the ready client instead.

#[path = "support/logging.rs"]
mod logging;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use patchworks_auth::{body::Body, test_util::FakePatchworks, AuthLayer, Credentials};
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    logging::init(tracing::Level::INFO);
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    match (
        var("PATCHWORKS_CLIENT_ID"),
        var("PATCHWORKS_CLIENT_SECRET"),
        var("PATCHWORKS_TOKEN_URL"),
        var("PATCHWORKS_INBOUND_URL"),
    ) {
        (Some(id), Some(secret), Some(token_url), Some(url)) => {
            let mut credentials = Credentials::client_credentials(id, secret);
            if let Some(scope) = var("PATCHWORKS_SCOPE") {
                credentials = credentials.scope(scope);
            }
            real(credentials, token_url.parse()?, url).await
        }
        _ => embedded().await,
    }
}

/// One `GET` through the ready client (TLS, timeout, redirects, retries, the API budget).
async fn real(credentials: Credentials, token_url: http::Uri, url: String) -> Result<(), BoxError> {
    let client = AuthLayer::new(credentials)
        .try_login_url(token_url)?
        .https_client();
    client.login().await?;
    let response = client
        .oneshot(Request::get(url).body(Body::empty())?)
        .await?;
    println!("GET: {}", response.status());
    Ok(())
}

async fn embedded() -> Result<(), BoxError> {
    let patchworks = FakePatchworks::start().await?;
    let client = AuthLayer::new(patchworks.client_credentials().scope("orders:write"))
        .login_url(patchworks.token_url())
        .layer(patchworks.client());
    let orders = patchworks.uri("/v1/acme/orders");
    let post = || Request::post(orders.clone()).body(Full::new(Bytes::from_static(b"{}")));

    let answers = (0..10).map(|_| client.clone().oneshot(post().expect("a request")));
    let answers = futures_util::future::join_all(answers).await;
    let ok = answers
        .iter()
        .filter(|answer| answer.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    println!(
        "10 concurrent POSTs: {ok} answered 200, {} token request",
        patchworks.logins()
    );

    patchworks.revoke_tokens();
    let status = client.clone().oneshot(post()?).await?.status();
    println!(
        "after a revocation: {status} (replayed with a new token), {} token requests in all",
        patchworks.logins()
    );
    assert_eq!((ok, patchworks.logins()), (10, 2));
    Ok(())
}
