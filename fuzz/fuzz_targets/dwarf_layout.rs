//! The runtime's struct layout and wait reasons, read from a binary's (often zlib-compressed)
//! DWARF and from `runtime.waitReasonStrings` through its symbol and segments.
#![no_main]

use leaktrace::tracee::layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(found)) = layout::from_dwarf(data) {
        let _ = found.version();
        let _ = found.to_json();
    }
    let _ = layout::wait_reason_strings(data);
});
