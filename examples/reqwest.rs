//! The layer for reqwest users: `AuthMiddleware` in a `reqwest_middleware::ClientWithMiddleware`.
//!
//! ```text
//! cargo run --example reqwest
//! ```
//!
//! Runs against an embedded fake Patchworks on loopback: a lazy login shared by concurrent
//! requests, the token reused, a revocation recovered by a replay. Against the real Patchworks,
//! give reqwest a TLS feature (`reqwest = { version = "0.13", features = ["rustls"] }`, its
//! default) and leave the layer's login URL at its default.

use patchworks_auth::{reqwest::AuthMiddleware, test_util::FakePatchworks, AuthLayer};
use reqwest_middleware::ClientBuilder;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let patchworks = FakePatchworks::start().await?;

    // No redirects below the middleware: the token and the password never follow one.
    let reqwest = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let layer = AuthLayer::new(patchworks.credentials()).login_url(patchworks.login_url());
    let auth = AuthMiddleware::new(layer, reqwest.clone());
    let client = ClientBuilder::new(reqwest).with(auth.clone()).build();
    let flows = patchworks.uri("/api/v1/flows").to_string();

    let answers = futures_util::future::join_all((0..10).map(|_| client.get(&flows).send())).await;
    let ok = answers
        .into_iter()
        .filter(|answer| answer.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    println!(
        "10 concurrent GETs: {ok} answered 200, {} login",
        patchworks.logins()
    );

    patchworks.revoke_tokens();
    let status = client.get(&flows).send().await?.status();
    println!(
        "after a revocation: {status} (replayed with a new token), {} logins in all",
        patchworks.logins()
    );
    let state = auth.state();
    println!(
        "token usable: {}, logins by this process: {}",
        state.usable, state.logins
    );
    assert_eq!((ok, patchworks.logins()), (10, 2));
    Ok(())
}
