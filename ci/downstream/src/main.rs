//! The four ways a new user wires patchworks-auth in, each run against the fake Patchworks on
//! loopback: the ready client in axum state, a hyper-util client with `Empty<Bytes>` GETs, an
//! axum handler forwarding its request body, and a reqwest `ClientWithMiddleware`.

use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{
    body::Body, reqwest::AuthMiddleware, test_util::FakePatchworks, AuthLayer, PatchworksClient,
};
use tower::{ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let fake = FakePatchworks::start().await?;
    let layer = || AuthLayer::new(fake.credentials()).login_url(fake.login_url());

    // 1. The ready client in axum state.
    async fn flows(State(client): State<PatchworksClient>) -> StatusCode {
        let request = Request::get("/flows").body(Default::default()).unwrap();
        client.oneshot(request).await.unwrap().status()
    }
    let client = layer().https_client().base_url(fake.uri("/api/v1/"));
    let app = Router::new().route("/flows", get(flows)).with_state(client);
    let response = app
        .oneshot(Request::get("/flows").body(axum::body::Body::empty())?)
        .await?;
    check("ready client in axum state", response.status())?;

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
