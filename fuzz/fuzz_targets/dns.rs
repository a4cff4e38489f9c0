//! `cargo xtask fuzz --target dns`: see `clinicwatch_fuzz::dns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clinicwatch_fuzz::dns(data));
