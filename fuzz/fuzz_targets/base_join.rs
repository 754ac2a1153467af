//! `cargo +nightly fuzz run base_join`: a path joined to the ready client's base URL never
//! leaves it, however it is encoded.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    patchworks_auth::fuzzing::base_join(data);
});
