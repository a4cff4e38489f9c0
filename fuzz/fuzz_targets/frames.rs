//! `cargo xtask fuzz --target frames`: see `clinicwatch_fuzz::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clinicwatch_fuzz::frames(data));
