//! `cargo +nightly fuzz run www_authenticate`: the `WWW-Authenticate` reader on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    patchworks_auth::fuzzing::www_authenticate(data);
});
