//! Token lifetime: renewal ahead of expiry, expiry itself, and when a renewal fails.
//!
//! These run on a paused clock: I/O happens inside `hold_clock`, time moves with `sleep`.

mod support;

use http::StatusCode;
use patchworks_auth::test_util::{hold_clock, FakePatchworks, LoginAnswer};
use std::time::Duration;
use support::*;
use tokio::time::sleep;
use tower::Layer;

async fn ok(client: &Client, fake: &FakePatchworks) {
    assert_eq!(
        hold_clock(status(client, fake, "/api/v1/flows")).await,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn renews_in_the_background_before_expiry() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(600));
    let client = layer(&fake)
        .refresh_before(Duration::from_secs(60))
        .layer(fake.client());

    ok(&client, &fake).await;
    let first = last_api_authorization(&fake).unwrap();
    sleep(Duration::from_secs(539)).await;
    ok(&client, &fake).await;
    assert_eq!(fake.logins(), 1, "not yet in the refresh window");

    sleep(Duration::from_secs(2)).await; // 541 s: in the window, 59 s before expiry
    hold_clock(async {
        fake.hold_logins();
        // Requests go on with the still-valid token while one renewal runs.
        for _ in 0..5 {
            assert_eq!(
                status(&client, &fake, "/api/v1/flows").await,
                StatusCode::OK
            );
            assert_eq!(last_api_authorization(&fake).unwrap(), first);
        }
        assert_eq!(fake.logins(), 1 + 1, "exactly one renewal");
        fake.release_logins();
    })
    .await;
    // The renewal's answer lands; the next request carries the new token.
    let mut renewed = None;
    for _ in 0..100 {
        ok(&client, &fake).await;
        let now = last_api_authorization(&fake).unwrap();
        if now != first {
            renewed = Some(now);
            break;
        }
    }
    assert!(renewed.is_some(), "the renewed token was never used");
    assert_eq!(fake.logins(), 2);
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_sent() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(60));
    let client = client(&fake);

    ok(&client, &fake).await;
    // Idle past the expiry: no renewal ran, since nobody asked.
    sleep(Duration::from_secs(120)).await;
    assert_eq!(fake.logins(), 1, "no login while idle");
    ok(&client, &fake).await;
    assert_eq!(fake.logins(), 2);
    assert_eq!(fake.expired_tokens_seen(), 0);
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test(start_paused = true)]
async fn short_lived_tokens_are_not_renewed_on_every_request() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(10));
    // A refresh window longer than the token's whole life.
    let client = layer(&fake)
        .refresh_before(Duration::from_secs(3600))
        .layer(fake.client());
    for _ in 0..40 {
        ok(&client, &fake).await;
        sleep(Duration::from_millis(100)).await;
    }
    // 4 s of requests every 100 ms: the window is capped at half the 10 s lifetime.
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.expired_tokens_seen(), 0);
}

#[tokio::test(start_paused = true)]
async fn expiry_counts_from_when_the_login_was_sent() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(60));
    let client = layer(&fake)
        .refresh_before(Duration::ZERO)
        .layer(fake.client());

    fake.hold_logins();
    let first = tokio::spawn({
        let (client, uri) = (client.clone(), fake.uri("/api/v1/flows"));
        async move { send(&client, get(uri)).await.map(|r| r.status()) }
    });
    hold_clock(async {
        until("the login reaches the server", || fake.logins() == 1).await;
        // The login takes 8 s to answer (within one attempt's time: a third of the 30 s
        // login timeout).
        tokio::time::advance(Duration::from_secs(8)).await;
        fake.release_logins();
        assert_eq!(first.await.unwrap().unwrap(), StatusCode::OK);
    })
    .await;

    // Sent at 0 s with a 60 s lifetime: no longer sent from 55 s (a tenth, at most 5 s, before
    // expiry), although the answer came at 8 s.
    sleep(Duration::from_secs(46)).await; // 54 s
    ok(&client, &fake).await;
    assert_eq!(fake.logins(), 1);
    sleep(Duration::from_secs(2)).await; // 56 s
    ok(&client, &fake).await;
    assert_eq!(fake.logins(), 2);
    assert_eq!(fake.expired_tokens_seen(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_keeps_the_token_and_is_retried_after_a_backoff() {
    let fake = FakePatchworks::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(600));
    let client = layer(&fake)
        .refresh_before(Duration::from_secs(120))
        .layer(fake.client());
    ok(&client, &fake).await;
    let first = last_api_authorization(&fake).unwrap();

    fake.set_login_answer(LoginAnswer::Status(StatusCode::BAD_GATEWAY));
    sleep(Duration::from_secs(481)).await; // in the window
    hold_clock(async {
        assert_eq!(
            status(&client, &fake, "/api/v1/flows").await,
            StatusCode::OK
        );
        until("the renewal fails", || fake.logins() == 2).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The token stays in use, and no request starts another login during the back-off.
    for _ in 0..5 {
        ok(&client, &fake).await;
        assert_eq!(last_api_authorization(&fake).unwrap(), first);
    }
    assert_eq!(fake.logins(), 2);

    fake.set_login_answer(LoginAnswer::Token);
    sleep(Duration::from_secs(1)).await; // past the 250 ms back-off
    hold_clock(async {
        assert_eq!(
            status(&client, &fake, "/api/v1/flows").await,
            StatusCode::OK
        );
        until("the renewal is retried", || fake.logins() == 3).await;
    })
    .await;
    let mut renewed = false;
    for _ in 0..100 {
        ok(&client, &fake).await;
        if last_api_authorization(&fake).unwrap() != first {
            renewed = true;
            break;
        }
    }
    assert!(renewed);
    assert_eq!(fake.logins(), 3);
    assert_eq!(fake.unauthorized(), 0);
}
