#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtfw_fuzz::targets::command_validation(data));
