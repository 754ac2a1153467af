//! A fake Patchworks on loopback, for tests outside a Rust test process: several processes
//! sharing a token store, or an app in another language.
//!
//! ```text
//! cargo run -p patchworks-auth --features test-util --bin fake-patchworks -- --port 0
//! ```
//!
//! It prints one line, `http://127.0.0.1:<port>`, once it listens, then serves the login forms
//! (`/api/v1/login`, `/fabric/api/login`), the OAuth 2 token endpoint (`/oauth/token`) and the
//! API as `test_util::FakePatchworks` does, with its credentials (`test_util::EMAIL`,
//! `PASSWORD`, `CLIENT_ID`, `CLIENT_SECRET`). It stops on Ctrl-C, on SIGTERM, or when its
//! standard input closes (so that a test that spawned it with a pipe never leaves it behind).
//! `GET /fake/stats` answers its counts as JSON: `{"logins", "api_calls", "unauthorized"}`.

use patchworks_auth::test_util::FakePatchworks;
use std::io::Write as _;
use tokio::io::AsyncReadExt as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 0;
    let mut lifetime = None;
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|value| value.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--port", Some(value)) => port = u16::try_from(value).unwrap_or(0),
            ("--token-lifetime-secs", Some(value)) => lifetime = Some(value),
            _ => {
                eprintln!(
                    "usage: fake-patchworks [--port N] [--token-lifetime-secs N]\n\
                     (listens on 127.0.0.1:N, 0 for a port the system picks)"
                );
                std::process::exit(2);
            }
        }
    }
    let fake = FakePatchworks::start_on(port).await?;
    if let Some(secs) = lifetime {
        fake.set_token_lifetime(std::time::Duration::from_secs(secs));
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "http://{}", fake.addr())?;
    stdout.flush()?;
    drop(stdout);
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0; 64];
        while stdin.read(&mut buffer).await.is_ok_and(|read| read > 0) {}
    };
    #[cfg(unix)]
    let terminated = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminated = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = stdin_closed => {}
        () = terminated => {}
    }
    Ok(())
}
