//! Checks of the crate's internals: property tests (proptest, proptest-state-machine) in the
//! unit tests, and the model check of the driver (shuttle), which needs
//! `RUSTFLAGS="--cfg shuttle"`:
//!
//! ```text
//! RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle cargo test --lib driver_model
//! RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle cargo test --lib budget_shuttle
//! ```

#[cfg(not(shuttle))]
mod budget_model;
#[cfg(shuttle)]
mod budget_shuttle;
#[cfg(not(shuttle))]
mod challenge_properties;
#[cfg(not(shuttle))]
mod core_model;
#[cfg(shuttle)]
mod driver_model;
#[cfg(not(shuttle))]
mod login_properties;
