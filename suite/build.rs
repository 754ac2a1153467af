//! Marks this package's compile of the crate's source with `cfg(suite)`.
//!
//! The checks of the crate's internals (`checks/`, included by `src/lib.rs` under this cfg) need
//! proptest, proptest-state-machine and shuttle, dev-dependencies of this package only: the
//! crate at the top keeps its dev-dependencies to what a first `cargo run --example quickstart`
//! must build. Cargo has no per-package `--cfg`, so a build script sets it.
//!
//! With the `shuttle` feature it also sets `cfg(shuttle)`: the driver's lock is then shuttle's,
//! for the model check in `checks/driver_model.rs` (`cargo test -p patchworks-auth-suite
//! --features shuttle --lib driver_model`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(suite)");
    println!("cargo::rustc-check-cfg=cfg(shuttle)");
    println!("cargo::rustc-cfg=suite");
    if std::env::var_os("CARGO_FEATURE_SHUTTLE").is_some() {
        println!("cargo::rustc-cfg=shuttle");
    }
}
