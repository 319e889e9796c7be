//! `.go.buildinfo` contents, the first thing leaktrace reads from a target binary, and the
//! fallback scan for a Go version string in a whole file.
#![no_main]

use leaktrace::tracee::buildinfo::{self, GoVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = buildinfo::parse(data) {
        // The version is read from the stored string, so the two always agree.
        assert_eq!(GoVersion::parse(&info.version_string), Some(info.version));
        let _ = info.experiments();
        let _ = info.setting("GOOS");
        let _ = info.version.is_tested();
    }
    let _ = buildinfo::version_from_bytes(data);
});
