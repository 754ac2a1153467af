//! Checks of the crate's internals that need this package's dev-dependencies: compiled into
//! the crate's unit tests here (`cfg(suite)`, see `build.rs`), never into the crate itself.

#[cfg(not(shuttle))]
mod core_model;
#[cfg(shuttle)]
mod driver_model;
