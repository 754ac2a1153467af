//! `cargo +nightly fuzz run login_answer`: the login answer parser on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    patchworks_auth::fuzzing::login_answer(data);
});
