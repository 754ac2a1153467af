//! The layer's metrics on a Prometheus scrape: `cargo run --example metrics`.
//!
//! Serves them on loopback with `metrics-exporter-prometheus`, drives a login, a background
//! renewal and a 401 against an embedded fake Patchworks, prints the scrape's
//! `patchworks_auth_*` lines, and exits. The layer needs its `metrics` feature.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::PrometheusBuilder;
use patchworks_auth::{test_util::FakePatchworks, AuthLayer};
use std::{net::Ipv4Addr, time::Duration};
use tower::{BoxError, Layer, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    PrometheusBuilder::new()
        .with_http_listener((Ipv4Addr::LOCALHOST, port))
        .install()?;

    let fake = FakePatchworks::start().await?;
    // Two-second tokens: renewal is due after one.
    fake.set_token_lifetime(Duration::from_secs(2));
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .layer(fake.client());
    let get = |path: &str| {
        let request = Request::get(fake.uri(path)).body(Full::<Bytes>::default());
        client.clone().oneshot(request.expect("a request"))
    };
    let mut watch = client.watch();

    println!("a login: {}", get("/api/v1/flows").await?.status());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    println!(
        "a renewal, in the background: {}",
        get("/api/v1/flows").await?.status()
    );
    watch.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(5), watch.changed()).await??;
    fake.revoke_tokens();
    println!("a 401, recovered: {}", get("/api/v1/flows").await?.status());

    let scrape = fake
        .client()
        .get(format!("http://127.0.0.1:{port}/metrics").parse()?)
        .await?;
    assert_eq!(scrape.status(), StatusCode::OK);
    let body = scrape.into_body().collect().await?.to_bytes();
    println!("\nthe scrape (http://127.0.0.1:{port}/metrics):");
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| line.starts_with("patchworks_auth"))
        .for_each(|line| println!("  {line}"));
    Ok(())
}
