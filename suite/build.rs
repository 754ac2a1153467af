//! Marks this package's compile of the crate's source with `cfg(suite)`.
//!
//! The crate's property tests (`src/login.rs`, `src/challenge.rs`) need proptest, a
//! dev-dependency of this package only: the crate at the top keeps its dev-dependencies to what a
//! first `cargo run --example quickstart` must build. Cargo has no per-package `--cfg`, so a build
//! script sets it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(suite)");
    println!("cargo::rustc-cfg=suite");
}
