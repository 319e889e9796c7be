//! A whole executable, as `leaktrace -p PID` opens `/proc/PID/exe`: the ELF headers, build info
//! and function table, the lookups the probes and stack symbolization make, and the decoding
//! of runtime code that finds the globals of stripped binaries.
#![no_main]

use leaktrace::tracee::binary::GoBinary;
use leaktrace::tracee::globals;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(binary) = GoBinary::from_bytes("fuzz-input", data.to_vec()) else {
        return;
    };
    // The functions leaktrace attaches uprobes to, and one everything has.
    for name in ["runtime.gopark", "runtime.ready", "main.main"] {
        let Some(f) = binary.function(name) else {
            continue;
        };
        let _ = binary.file_offset(f.addr);
        let _ = binary.symbolize(f.addr);
        let _ = binary.symbolize(f.addr.saturating_add(f.size / 2));
    }
    let text = binary.text_range();
    let _ = binary.symbolize(text.start);
    let _ = binary.file_offset(text.start);
    let _ = globals::locate(&binary);
    if !binary.is_stripped() {
        let _ = globals::locate_in_code(&binary);
    }
});
