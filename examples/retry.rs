//! `AuthLayer` among the other layers of a production client, in the order that is right.
//!
//! ```text
//! cargo run --example retry
//! ```
//!
//! ```text
//! ServiceBuilder::new()
//!     .timeout(..)                   // 1. bounds the whole call: every hop, retry and login wait
//!     .layer(FollowRedirectLayer)    // 2. each hop is a new request the layers below check again
//!     .retry(RetryPolicy::new())     // 3. each attempt passes through the layer: current token
//!     .layer(AuthLayer::new(..))     // 4. adds the token; handles 401 (renew, replay once)
//!     .service(client)               //    the login goes through the client too
//! ```
//!
//! Why this order:
//! - Redirects outside the layer: a redirect to another origin becomes a new request, and the
//!   origin check keeps the token away from it. Inside, the token would follow the redirect.
//! - Retries outside the layer: a retried request gets the token that is current then, and the
//!   retry never sees a 401 (the layer below handles it). Inside, a retry would resend a stale
//!   token.
//! - The timeout outermost: it bounds what the caller waits, all attempts included; it does not
//!   abort a login other requests wait on.
//!
//! Against a fake Patchworks on loopback, or the real one when `PATCHWORKS_EMAIL` and
//! `PATCHWORKS_PASSWORD` are set.

#[path = "support/logging.rs"]
mod logging;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{retry::RetryPolicy, test_util::FakePatchworks, AuthLayer, Credentials};
use std::time::Duration;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;
use tracing::Level;

/// The stack, for any HTTP client.
fn stack<S>(
    auth: AuthLayer,
    client: S,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = BoxError,
> + Clone
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .layer(FollowRedirectLayer::new())
        .retry(RetryPolicy::new().backoff(Duration::from_millis(50), Duration::from_secs(2)))
        .layer(auth)
        .service(client)
}

async fn get<S>(client: &S, uri: Uri) -> Result<StatusCode, BoxError>
where
    S: Service<
            Request<Full<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        > + Clone,
{
    let request = Request::get(uri).body(Full::default())?;
    Ok(client.clone().oneshot(request).await?.status())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    logging::init(Level::DEBUG);

    if std::env::var_os(Credentials::EMAIL_VAR).is_some() {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_only()
            .enable_http1()
            .build();
        let client = stack(
            AuthLayer::new(Credentials::from_env()?),
            Client::builder(TokioExecutor::new()).build(https),
        );
        let flows: Uri = "https://core.wearepatchworks.com/api/v1/flows".parse()?;
        println!("GET {flows} -> {}", get(&client, flows.clone()).await?);
        return Ok(());
    }

    let patchworks = FakePatchworks::start().await?;
    let elsewhere = FakePatchworks::start().await?;
    let client = stack(
        AuthLayer::new(patchworks.credentials()).login_url(patchworks.login_url()),
        patchworks.client(),
    );

    patchworks.fail_api_calls(2, StatusCode::SERVICE_UNAVAILABLE, None);
    let status = get(&client, patchworks.uri("/api/v1/flows")).await?;
    println!(
        "1. Two 503s, then {status}: retried with back-off ({} API calls, {} login)",
        patchworks.api_calls(),
        patchworks.logins()
    );
    assert_eq!((status, patchworks.api_calls()), (StatusCode::OK, 3));

    patchworks.fail_api_calls(1, StatusCode::TOO_MANY_REQUESTS, Some(1));
    let status = get(&client, patchworks.uri("/api/v1/flows")).await?;
    println!("2. A 429 with Retry-After: 1, then {status}: waited the second it asked for");
    assert_eq!(status, StatusCode::OK);

    patchworks.redirect("/api/v1/old-flows", "/api/v1/flows");
    let status = get(&client, patchworks.uri("/api/v1/old-flows")).await?;
    println!("3. A redirect within Patchworks, then {status}: the token went along");
    assert_eq!(status, StatusCode::OK);

    patchworks.redirect("/api/v1/export", &elsewhere.uri("/upload").to_string());
    get(&client, patchworks.uri("/api/v1/export")).await?;
    let leaked = elsewhere
        .seen()
        .iter()
        .any(|seen| seen.authorization.is_some());
    println!("4. A redirect to another origin: the token went along: {leaked}");
    assert!(!leaked);

    patchworks.revoke_tokens();
    let status = get(&client, patchworks.uri("/api/v1/flows")).await?;
    println!(
        "5. A revoked token: {status}, after a login and one replay below the retry ({} logins)",
        patchworks.logins()
    );
    assert_eq!((status, patchworks.logins()), (StatusCode::OK, 2));
    Ok(())
}
