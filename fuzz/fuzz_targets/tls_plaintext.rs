//! `cargo xtask fuzz --target tls_plaintext`: see `clinicwatch_fuzz::tls_plaintext`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clinicwatch_fuzz::tls_plaintext(data));
