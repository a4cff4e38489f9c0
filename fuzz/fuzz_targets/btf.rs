//! `cargo xtask fuzz --target btf`: see `clinicwatch_fuzz::btf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clinicwatch_fuzz::btf(data));
