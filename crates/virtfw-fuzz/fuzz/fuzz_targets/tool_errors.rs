#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtfw_fuzz::targets::tool_errors(data));
