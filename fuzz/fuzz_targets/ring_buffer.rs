//! `cargo xtask fuzz --target ring_buffer`: see `clinicwatch_fuzz::ring_buffer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clinicwatch_fuzz::ring_buffer(data));
