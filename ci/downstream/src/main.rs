//! The ways a new user wires patchworks-auth in, each run against the fake Patchworks on
//! loopback: the ready client in axum state forwarding a handler's body, a hyper-util client
//! with `Empty<Bytes>` GETs, `body::Body` under `RetryPolicy`, an axum handler forwarding its
//! request body, a reqwest `ClientWithMiddleware`, a `FileStore` (its first request timed in
//! this debug build), and the configuration errors a wrong URL gets.

use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{
    body::Body, reqwest::AuthMiddleware, retry::RetryPolicy, store::FileStore,
    test_util::FakePatchworks, AuthLayer, PatchworksClient,
};
use std::time::{Duration, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let fake = FakePatchworks::start().await?;
    let layer = || AuthLayer::new(fake.credentials()).login_url(fake.login_url());

    // 1. The ready client in axum state: a GET, and a handler forwarding its axum `Body`.
    async fn flows(State(client): State<PatchworksClient>) -> StatusCode {
        let request = Request::get("/flows").body(Body::empty()).unwrap();
        client.oneshot(request).await.unwrap().status()
    }
    async fn create(
        State(client): State<PatchworksClient>,
        request: axum::extract::Request,
    ) -> StatusCode {
        let request = Request::post("/flows").body(request.into_body()).unwrap();
        client.oneshot(request).await.unwrap().status()
    }
    let client = layer().https_client().base_url(fake.uri("/api/v1/"));
    let app = Router::new()
        .route("/flows", get(flows).post(create))
        .with_state(client);
    let response = app
        .clone()
        .oneshot(Request::get("/flows").body(axum::body::Body::empty())?)
        .await?;
    check("ready client in axum state", response.status())?;
    let response = app
        .oneshot(Request::post("/flows").body(axum::body::Body::from("{\"name\":\"x\"}"))?)
        .await?;
    check("ready client forwarding an axum Body", response.status())?;
    if fake.seen().last().map(|seen| seen.body.clone()) != Some(Bytes::from("{\"name\":\"x\"}")) {
        return Err("the forwarded body did not reach Patchworks".into());
    }

    // 2. A hyper-util client with `Empty<Bytes>` GETs.
    let client = ServiceBuilder::new()
        .map_request(|request: Request<Empty<Bytes>>| request.map(Body::from))
        .layer(layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Body>());
    let request = Request::get(fake.uri("/api/v1/flows")).body(Empty::new())?;
    check(
        "hyper-util, Empty<Bytes>",
        client.oneshot(request).await?.status(),
    )?;

    // 2b. `body::Body` under `RetryPolicy`, in the crate's one layer order: a 503 retried.
    let client = ServiceBuilder::new()
        .map_request(|request: Request<axum::body::Body>| request.map(Body::new))
        .timeout(Duration::from_secs(30))
        .layer(FollowRedirectLayer::new())
        .retry(RetryPolicy::new().backoff(Duration::from_millis(1), Duration::from_millis(2)))
        .layer(layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Body>());
    fake.fail_api_calls(1, StatusCode::SERVICE_UNAVAILABLE, Some(0));
    let request = Request::get(fake.uri("/api/v1/flows")).body(axum::body::Body::empty())?;
    check(
        "body::Body under RetryPolicy, a 503 retried",
        client.oneshot(request).await?.status(),
    )?;

    // 3. An axum handler forwarding its request body to Patchworks.
    let upstream = authed(layer());
    let forward = |State(upstream): State<Upstream>, request: axum::extract::Request| async move {
        let (mut parts, body) = request.into_parts();
        parts.uri = upstream.1.clone();
        let forwarded = Request::from_parts(parts, Body::new(body));
        upstream.0.oneshot(forwarded).await.unwrap().status()
    };
    let app = Router::new()
        .route("/forward", axum::routing::post(forward))
        .with_state(Upstream(upstream, fake.uri("/api/v1/flows")));
    let request = Request::post("/forward").body(axum::body::Body::from("{\"name\":\"x\"}"))?;
    check(
        "axum handler forwarding its body",
        app.oneshot(request).await?.status(),
    )?;

    // 4. A reqwest `ClientWithMiddleware`.
    let reqwest = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest.clone())
        .with(AuthMiddleware::new(layer(), reqwest))
        .build();
    let response = client
        .get(fake.uri("/api/v1/flows").to_string())
        .send()
        .await?;
    check("reqwest ClientWithMiddleware", response.status())?;

    // 5. A `FileStore`: the first request derives the sealing key (Argon2id) in this debug
    // build, with the profile lines the README gives (Cargo.toml).
    let dir = std::env::temp_dir().join(format!("downstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let client = ServiceBuilder::new()
        .map_request(|request: Request<Empty<Bytes>>| request.map(Body::from))
        .layer(layer().store(FileStore::new(dir.join("token"))))
        .service(Client::builder(TokioExecutor::new()).build_http::<Body>());
    let started = Instant::now();
    let request = Request::get(fake.uri("/api/v1/flows")).body(Empty::new())?;
    let status = client.oneshot(request).await?.status();
    println!(
        "FileStore, first request (login, Argon2id, seal): {:?}",
        started.elapsed()
    );
    std::fs::remove_dir_all(&dir)?;
    check("FileStore", status)?;

    // 6. What a wrong URL gets: a configuration error, before any request is sent.
    let elsewhere = FakePatchworks::start().await?;
    let client = layer().https_client().base_url(elsewhere.uri("/api/v1/"));
    let error = client
        .login()
        .await
        .err()
        .ok_or("an untrusted base_url logged in")?;
    println!("untrusted base_url: {error}");
    if !error.is_config() || elsewhere.api_calls() != 0 {
        return Err(format!("untrusted base_url: {error:?}").into());
    }
    let error = AuthLayer::new(fake.credentials())
        .try_login_url("http://staging.example.com/api/v1/login".parse()?)
        .err()
        .ok_or("a plain-text login URL was taken")?;
    println!("plain-text login URL: {error}");
    if !error.is_config() {
        return Err(format!("plain-text login URL: {error:?}").into());
    }
    Ok(())
}

type Authed =
    patchworks_auth::Auth<Client<hyper_util::client::legacy::connect::HttpConnector, Body>>;

#[derive(Clone)]
struct Upstream(Authed, http::Uri);

/// A hyper-util client taking any body, with the layer.
fn authed(layer: AuthLayer) -> Authed {
    tower::Layer::layer(
        &layer,
        Client::builder(TokioExecutor::new()).build_http::<Body>(),
    )
}

fn check(what: &str, status: StatusCode) -> Result<(), Error> {
    println!("{what}: {status}");
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{what}: {status}").into())
    }
}
