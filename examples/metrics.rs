//! The layer's metrics on a Prometheus scrape: `cargo run --example metrics`.
//!
//! Renders them with `metrics-exporter-prometheus`, served on loopback, drives a login, a background
//! renewal and a 401 against an embedded fake Patchworks, prints the scrape's
//! `patchworks_auth_*` lines, and exits. The layer needs its `metrics` feature.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusBuilder;
use patchworks_auth::{test_util::FakePatchworks, AuthLayer};
use std::{convert::Infallible, net::Ipv4Addr, time::Duration};
use tower::{BoxError, Layer, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // The scrape, served on loopback as a Prometheus server would read it.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let prometheus = prometheus.clone();
            let scrape = service_fn(move |_| {
                let text = Full::new(Bytes::from(prometheus.render()));
                async move { Ok::<_, Infallible>(Response::new(text)) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), scrape);
            tokio::spawn(connection);
        }
    });

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
