//! Logging for the examples: `RUST_LOG` as `target=level` pairs (say `patchworks_auth=debug`),
//! or the crate's own logs at `default` and above.

use std::io::{stdout, IsTerminal};
use tracing::Level;
use tracing_subscriber::{filter::Targets, fmt, prelude::*};

pub fn init(default: Level) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_target("patchworks_auth", default));
    tracing_subscriber::registry()
        // No colour codes into a pipe or a file.
        .with(
            fmt::layer()
                .with_target(false)
                .with_ansi(stdout().is_terminal())
                .compact(),
        )
        .with(filter)
        .init();
}
