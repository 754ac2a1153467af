//! An axum server that keeps the authenticated Patchworks client in its state and serves
//! `/flows` by calling Patchworks `GET /api/v1/flows`.
//!
//! ```text
//! cargo run --example axum_proxy              # serves, answers one request itself, exits
//! cargo run --example axum_proxy -- --serve   # serves until Ctrl-C; try the curl line it prints
//! ```
//!
//! Against a fake Patchworks on loopback, or the real one when `PATCHWORKS_EMAIL` and
//! `PATCHWORKS_PASSWORD` are set.

#[path = "support/logging.rs"]
mod logging;

use axum::{extract::State, http::header::CONTENT_TYPE, routing::get, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{test_util::FakePatchworks, AuthLayer, Credentials};
use tower::{util::BoxCloneSyncService, BoxError, Layer, ServiceExt};
use tracing::Level;

/// The outbound client, whatever its connector: what the handlers need to know of it.
type Patchworks =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<hyper::body::Incoming>, BoxError>;

#[derive(Clone)]
struct AppState {
    patchworks: Patchworks,
    flows: Uri,
}

async fn list_flows(
    State(state): State<AppState>,
) -> Result<(StatusCode, [(http::HeaderName, &'static str); 1], Bytes), (StatusCode, String)> {
    let request = Request::get(state.flows.clone())
        .body(Full::default())
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The layer logs in, renews and recovers from 401 by itself; an error here is one it could
    // not fix (bad credentials, Patchworks unreachable), and it says which.
    let response = state
        .patchworks
        .oneshot(request)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("Patchworks: {e}\n")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?
        .to_bytes();
    Ok((status, [(CONTENT_TYPE, "application/json")], body))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    logging::init(Level::INFO);

    // Keep the fake alive as long as the server.
    let mut _fake = None;
    let (patchworks, flows): (Patchworks, Uri) =
        if std::env::var_os(Credentials::EMAIL_VAR).is_some() {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_only()
                .enable_http1()
                .build();
            let client = AuthLayer::new(Credentials::from_env()?)
                .layer(Client::builder(TokioExecutor::new()).build(https));
            // Refuse to start with bad credentials, rather than fail the first request.
            client.login().await?;
            let flows = "https://svc-fabric.pwks.co/api/v1/flows".parse()?;
            (BoxCloneSyncService::new(client), flows)
        } else {
            let fake = FakePatchworks::start().await?;
            let client = AuthLayer::new(fake.credentials())
                .login_url(fake.login_url())
                .layer(fake.client());
            client.login().await?;
            let flows = fake.uri("/api/v1/flows");
            _fake = Some(fake);
            (BoxCloneSyncService::new(client), flows)
        };

    let app = Router::new()
        .route("/flows", get(list_flows))
        .with_state(AppState { patchworks, flows });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("Serving Patchworks flows; try:\n\n    curl http://{addr}/flows\n");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    if std::env::args().any(|arg| arg == "--serve") {
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    // Answer the curl line ourselves, so that the example checks itself and exits.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri: Uri = format!("http://{addr}/flows").parse()?;
    let response = client.get(uri).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("GET /flows -> {status}\n{}", String::from_utf8_lossy(&body));
    server.abort();
    if status != StatusCode::OK {
        return Err(format!("the proxy answered {status}").into());
    }
    Ok(())
}
