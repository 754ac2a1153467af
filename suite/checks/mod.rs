//! Checks of the crate's internals that need this package's dev-dependencies (proptest,
//! proptest-state-machine, shuttle): compiled into the crate's unit tests here (`cfg(suite)`,
//! see `build.rs`), never into the crate itself.

#[cfg(not(shuttle))]
mod challenge_properties;
#[cfg(not(shuttle))]
mod core_model;
#[cfg(shuttle)]
mod driver_model;
#[cfg(not(shuttle))]
mod login_properties;
