//! The main job: a hyper-util client that logs in to Patchworks by itself.
//!
//! ```text
//! cargo run -p patchworks-auth-quickstart
//! ```
//!
//! Runs against a fake Patchworks on loopback and shows the lazy login, the token's reuse, a
//! new login once the token expired, and the recovery from a 401. With `PATCHWORKS_EMAIL` and
//! `PATCHWORKS_PASSWORD` set, it talks to the real Patchworks instead.

#[path = "../support/logging.rs"]
mod logging;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{test_util::FakePatchworks, AuthLayer, Credentials};
use std::time::Duration;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tracing::Level;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    logging::init(Level::INFO);

    if std::env::var_os(Credentials::EMAIL_VAR).is_some() {
        real().await
    } else {
        fake().await
    }
}

/// Against the real Patchworks, over TLS.
async fn real() -> Result<(), BoxError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_only()
        .enable_http1()
        .build();
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(Credentials::from_env()?))
        .service(Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https));

    let flows: Uri = "https://core.wearepatchworks.com/api/v1/flows".parse()?;
    for attempt in 1..=2 {
        let request = Request::get(flows.clone()).body(Full::default())?;
        let response = client.clone().oneshot(request).await?;
        println!("request {attempt}: GET {flows} -> {}", response.status());
    }
    println!("The second request reused the token of the first login.");
    Ok(())
}

/// Against a fake Patchworks on loopback.
async fn fake() -> Result<(), BoxError> {
    let patchworks = FakePatchworks::start().await?;
    patchworks.set_token_lifetime(Duration::from_secs(2));
    println!("Fake Patchworks on http://{}", patchworks.addr());
    println!("(set PATCHWORKS_EMAIL and PATCHWORKS_PASSWORD to talk to the real one)\n");

    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(patchworks.credentials()).login_url(patchworks.login_url()))
        .service(patchworks.client());
    let flows = patchworks.uri("/api/v1/flows");
    let get = || {
        let request = Request::get(flows.clone()).body(Full::<Bytes>::default());
        let client = client.clone();
        async move {
            let status = client.oneshot(request?).await?.status();
            Ok::<StatusCode, BoxError>(status)
        }
    };
    let show = |step: &str, status: StatusCode| {
        println!(
            "{step:<50} -> {status}   logins so far: {}, API 401s: {}",
            patchworks.logins(),
            patchworks.unauthorized()
        );
    };

    println!(
        "1. Built the client: {} logins (the layer is lazy)",
        patchworks.logins()
    );
    assert_eq!(patchworks.logins(), 0);

    show("2. First request logs in", get().await?);
    show("3. Second request reuses the token", get().await?);
    show("   Third request reuses the token", get().await?);
    assert_eq!(patchworks.logins(), 1);

    println!("   ... waiting 2 s for the 2 s token to expire ...");
    tokio::time::sleep(Duration::from_secs(2)).await;
    show(
        "4. After expiry: a new login, never a stale token",
        get().await?,
    );
    assert_eq!(patchworks.logins(), 2);
    assert_eq!(patchworks.expired_tokens_seen(), 0);

    patchworks.revoke_tokens();
    println!("   ... the server revoked every token ...");
    show("5. 401: new login, request replayed", get().await?);
    assert_eq!(patchworks.logins(), 3);
    assert_eq!(patchworks.unauthorized(), 1);

    println!(
        "\nDone: {} API calls, {} logins, the caller never saw a 401.",
        patchworks.api_calls(),
        patchworks.logins()
    );
    Ok(())
}
