//! The Go version and build settings of a binary, read from its `.go.buildinfo` section.
//!
//! Everything version-dependent in leaktrace (struct offsets, wait reasons, which runtime
//! functions exist) is keyed by the Go version, so this is the first thing read from a target.
//! The section survives `-ldflags=-s -w` and PIE builds; when it is missing anyway (a binary
//! post-processed by some packer, say), [`version_from_bytes`] finds the runtime's own copy of
//! the version string instead.
//!
//! Format (Go 1.18 and newer, see go1.27.3 `src/debug/buildinfo/buildinfo.go`): a 32-byte header
//! `"\xff Go buildinf:"`, pointer size (1 byte), flags (1 byte, bit 0x2 = strings inline),
//! padding; then the version string and the module info, each as a uvarint length followed by
//! the bytes. The module info is wrapped in two 16-byte sentinels and holds tab-separated
//! `path`, `mod`, `dep`, `=>` and `build` lines (go1.27.3 `src/runtime/debug/mod.go`).

use std::fmt;

use thiserror::Error;

/// A Go release, as `go1.MINOR.PATCH`. Ordered by release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> GoVersion {
        GoVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses the start of a Go version string: `go1.26.6`, `go1.26.6-X:foo`, `go1.25.5 X:arenas`,
    /// `go1.21rc2` (patch 0), `devel go1.27-abcdef ...`. The patch is 0 when absent. Returns
    /// `None` when no `go<major>.<minor>` is found where expected.
    pub fn parse(s: &str) -> Option<GoVersion> {
        // Development toolchains write "devel go1.27-abcdef Tue ..." (1.21+); older ones wrote
        // "devel +abcdef", which carries no version at all.
        let s = s.strip_prefix("devel ").unwrap_or(s);
        let rest = s.strip_prefix("go")?;
        let (major, rest) = leading_number(rest)?;
        let rest = rest.strip_prefix('.')?;
        let (minor, rest) = leading_number(rest)?;
        let patch = match rest.strip_prefix('.') {
            Some(r) => leading_number(r).map_or(0, |(p, _)| p),
            None => 0,
        };
        Some(GoVersion::new(major, minor, patch))
    }

    /// Whether this release is one the tests ran against: the same major.minor as one of the
    /// toolchains from [`MIN_SUPPORTED`] to [`MAX_TESTED`]. Patch releases do not change the
    /// formats or struct layouts leaktrace reads, so any 1.27.x counts.
    pub fn is_tested(&self) -> bool {
        (MIN_SUPPORTED.major, MIN_SUPPORTED.minor) <= (self.major, self.minor)
            && (self.major, self.minor) <= (MAX_TESTED.major, MAX_TESTED.minor)
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest Go release leaktrace reads: the runtime layouts, the pclntab format (1.20+) and
/// the register ABI facts in `GO-RUNTIME.md` were checked from here on.
pub const MIN_SUPPORTED: GoVersion = GoVersion::new(1, 21, 0);

/// The newest toolchain the tests ran against (go1.27.3). Use [`GoVersion::is_tested`] to ask
/// whether a binary's release is covered: later 1.27 patches are.
pub const MAX_TESTED: GoVersion = GoVersion::new(1, 27, 3);

/// What `.go.buildinfo` says about how the binary was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// The version exactly as stored, e.g. `go1.26.6-X:sizespecializedmalloc`.
    pub version_string: String,
    pub version: GoVersion,
    /// The main package path (the `path` line), e.g. `fixture` or `github.com/x/y/cmd/z`.
    /// `None` when the binary was built without module information.
    pub main_path: Option<String>,
    /// The `build` lines in order, unquoted: `-buildmode`, `-compiler`, `-ldflags`,
    /// `CGO_ENABLED`, `GOARCH`, `GOOS`, `GOAMD64`, `GOEXPERIMENT`, `vcs.*`, ...
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// The value of the first `build` setting named `key`.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The GOEXPERIMENT flags that differ from the toolchain defaults, from the version string
    /// (`go1.25.5 X:arenas`, `go1.26.6-X:a,b`). They change runtime behaviour leaktrace relies
    /// on (e.g. `sizespecializedmalloc`), so the version string is the authoritative place.
    pub fn experiments(&self) -> Vec<&str> {
        let Some(at) = self.version_string.find("X:") else {
            return Vec::new();
        };
        let list = &self.version_string[at + 2..];
        let list = list.split([' ', '-']).next().unwrap_or("");
        list.split(',').filter(|s| !s.is_empty()).collect()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("no \"\\xff Go buildinf:\" header")]
    NoMagic,
    #[error("the build info header is cut short")]
    Truncated,
    #[error(
        "build info in the pointer format of Go 1.17 and older (flags {flags:#x}); leaktrace \
         supports Go 1.21 and newer"
    )]
    TooOld { flags: u8 },
    #[error("the {what} string is cut short or its length is garbled")]
    BadString { what: &'static str },
    #[error("unrecognised Go version {0:?}")]
    BadVersion(String),
}

/// `"\xff Go buildinf:"`, the start of the section (go1.27.3 `src/debug/buildinfo/buildinfo.go`).
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Header size; the strings start right after it (same file, `buildInfoHeaderSize`).
const HEADER_SIZE: usize = 32;
/// The header is 16-byte aligned (same file, `buildInfoAlign`).
const ALIGN: usize = 16;
/// Flags bit: 0x2 = strings inline after the header (Go 1.18+), 0 = pointers to Go strings
/// (Go 1.17 and older). Same file, `flagsVersionInl`.
const FLAGS_VERSION_INL: u8 = 0x2;
/// Length of each sentinel around the module info (`src/cmd/go/internal/modload/build.go`,
/// `infoStart`/`infoEnd`, 16 bytes each).
const MODINFO_SENTINEL: usize = 16;

/// Parses the contents of a `.go.buildinfo` section. The header is looked for at the start and
/// then at each 16-byte boundary, as `debug/buildinfo` does in the data segment.
pub fn parse(section: &[u8]) -> Result<BuildInfo, BuildInfoError> {
    let start = (0..section.len())
        .step_by(ALIGN)
        .find(|&i| section[i..].starts_with(MAGIC))
        .ok_or(BuildInfoError::NoMagic)?;
    let blob = &section[start..];
    if blob.len() < HEADER_SIZE {
        return Err(BuildInfoError::Truncated);
    }
    let flags = blob[MAGIC.len() + 1];
    if flags & FLAGS_VERSION_INL == 0 {
        return Err(BuildInfoError::TooOld { flags });
    }
    let mut rest = &blob[HEADER_SIZE..];
    let version_bytes =
        read_string(&mut rest).ok_or(BuildInfoError::BadString { what: "version" })?;
    let version_string = String::from_utf8_lossy(version_bytes).into_owned();
    let version = GoVersion::parse(&version_string)
        .ok_or_else(|| BuildInfoError::BadVersion(version_string.clone()))?;
    // A binary built without modules has an empty module info string; a garbled one is
    // reported rather than guessed at.
    let modinfo = read_string(&mut rest).ok_or(BuildInfoError::BadString {
        what: "module info",
    })?;
    let modinfo = strip_sentinels(modinfo);
    let (main_path, settings) = parse_modinfo(&String::from_utf8_lossy(modinfo));
    Ok(BuildInfo {
        version_string,
        version,
        main_path,
        settings,
    })
}

/// Finds the Go version in raw binary contents when `.go.buildinfo` is missing. The runtime
/// keeps its version (`runtime.buildVersion`) as plain bytes in `.rodata`, so the string
/// `go1.N.P` appears there, not glued to a preceding letter or digit.
///
/// Other strings of that shape can be in a binary (GODEBUG tables name releases like
/// `go1.21`), so the most plausible is picked: full `go1.N.P` over `go1.N`, then the most
/// frequent, then the newest.
pub fn version_from_bytes(data: &[u8]) -> Option<GoVersion> {
    let mut seen: Vec<(GoVersion, bool, usize)> = Vec::new();
    let mut from = 0;
    while let Some(i) = find(&data[from..], b"go1.").map(|i| i + from) {
        from = i + 1;
        if i > 0 && data[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let Some((version, full)) = version_at(&data[i..]) else {
            continue;
        };
        match seen
            .iter_mut()
            .find(|(v, f, _)| *v == version && *f == full)
        {
            Some(entry) => entry.2 += 1,
            None => seen.push((version, full, 1)),
        }
    }
    seen.into_iter()
        .max_by_key(|&(v, full, count)| (full, count, v))
        .map(|(v, _, _)| v)
}

/// Reads `go1.N[.P]` at the start of `s`, requiring the number to end where the version ends
/// (not followed by another digit or dot), and a plausible minor. Returns whether the patch
/// was present.
fn version_at(s: &[u8]) -> Option<(GoVersion, bool)> {
    let text = &s[..s.len().min(24)];
    let text = std::str::from_utf8(text)
        .unwrap_or_else(|e| std::str::from_utf8(&text[..e.valid_up_to()]).unwrap_or_default());
    let rest = text.strip_prefix("go1.")?;
    let (minor, rest) = leading_number(rest)?;
    let (patch, rest, full) = match rest.strip_prefix('.') {
        Some(r) => {
            let (p, r) = leading_number(r)?;
            (p, r, true)
        }
        None => (0, rest, false),
    };
    if rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') || minor > 99 || patch > 99 {
        return None;
    }
    Some((GoVersion::new(1, minor, patch), full))
}

fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 || end > 9 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads a uvarint length and that many bytes, advancing `rest`.
fn read_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len: u64 = 0;
    let mut used = 0;
    for (i, &b) in rest.iter().enumerate().take(10) {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            used = i + 1;
            break;
        }
    }
    if used == 0 {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    let body = rest.get(used..)?.get(..len)?;
    *rest = &rest[used + len..];
    Some(body)
}

/// Removes the 16-byte sentinels around the module info; returns an empty slice when they are
/// not there, as `debug/buildinfo` does (go1.27.3 `src/debug/buildinfo/buildinfo.go`).
fn strip_sentinels(modinfo: &[u8]) -> &[u8] {
    if modinfo.len() > 2 * MODINFO_SENTINEL
        && modinfo[modinfo.len() - MODINFO_SENTINEL - 1] == b'\n'
    {
        &modinfo[MODINFO_SENTINEL..modinfo.len() - MODINFO_SENTINEL]
    } else {
        &[]
    }
}

/// Extracts the `path` line and the `build` settings. Malformed lines are skipped: the
/// settings are informational, and one odd line should not hide the version.
fn parse_modinfo(text: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut main_path = None;
    let mut settings = Vec::new();
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("path\t") {
            main_path = Some(path.to_string());
        } else if let Some(kv) = line.strip_prefix("build\t")
            && let Some(setting) = parse_build_setting(kv)
        {
            settings.push(setting);
        }
    }
    (main_path, settings)
}

/// Parses `key=value`, where the key and value may be Go-quoted (`-ldflags="-s -w"`), following
/// go1.27.3 `src/runtime/debug/mod.go` `ParseBuildInfo`.
fn parse_build_setting(kv: &str) -> Option<(String, String)> {
    let (key, raw_value) = if kv.starts_with(['"', '`']) {
        let (key, used) = unquote_prefix(kv)?;
        (key, kv[used..].strip_prefix('=')?)
    } else {
        let (key, value) = kv.split_once('=')?;
        (key.to_string(), value)
    };
    if key.is_empty() {
        return None;
    }
    let value = if raw_value.starts_with(['"', '`']) {
        let (value, used) = unquote_prefix(raw_value)?;
        if used != raw_value.len() {
            return None;
        }
        value
    } else {
        raw_value.to_string()
    };
    Some((key, value))
}

/// Unquotes a Go string literal at the start of `s` (`"..."` with escapes, or a raw
/// `` `...` ``), returning it and the number of bytes it took. Covers what `strconv.Quote`
/// produces.
fn unquote_prefix(s: &str) -> Option<(String, usize)> {
    let mut chars = s.char_indices();
    let (_, quote) = chars.next()?;
    if quote == '`' {
        let end = s[1..].find('`')? + 1;
        return Some((s[1..end].to_string(), end + 1));
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                let simple = match e {
                    'a' => Some('\x07'),
                    'b' => Some('\x08'),
                    'f' => Some('\x0c'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\x0b'),
                    '\\' => Some('\\'),
                    '"' => Some('"'),
                    '\'' => Some('\''),
                    _ => None,
                };
                if let Some(c) = simple {
                    out.push(c);
                    continue;
                }
                let digits = match e {
                    'x' => 2,
                    'u' => 4,
                    'U' => 8,
                    '0'..='7' => 2,
                    _ => return None,
                };
                let mut hex = String::new();
                for _ in 0..digits {
                    hex.push(chars.next()?.1);
                }
                let code = if e.is_ascii_digit() {
                    u32::from_str_radix(&format!("{e}{hex}"), 8).ok()?
                } else {
                    u32::from_str_radix(&hex, 16).ok()?
                };
                out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A section laid out as the Go 1.18+ linker writes it.
    fn section(version: &str, modinfo: &str, flags: u8) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.push(8);
        s.push(flags);
        s.resize(HEADER_SIZE, 0);
        push_string(&mut s, version.as_bytes());
        let mut wrapped = vec![0x30; MODINFO_SENTINEL];
        wrapped.extend_from_slice(modinfo.as_bytes());
        wrapped.extend_from_slice(&[0xf9; MODINFO_SENTINEL]);
        push_string(&mut s, if modinfo.is_empty() { &[] } else { &wrapped });
        s
    }

    fn push_string(out: &mut Vec<u8>, bytes: &[u8]) {
        let mut n = bytes.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
    }

    const MODINFO: &str = "path\tfixture\nmod\tfixture\t(devel)\t\n\
        build\t-buildmode=pie\nbuild\t-compiler=gc\nbuild\t-ldflags=\"-s -w\"\n\
        build\tCGO_ENABLED=0\nbuild\tGOARCH=amd64\nbuild\tGOOS=linux\nbuild\tGOAMD64=v1\n";

    #[test]
    fn parses_version_path_and_quoted_settings() {
        let info = parse(&section("go1.26.6-X:sizespecializedmalloc", MODINFO, 2)).unwrap();
        assert_eq!(info.version_string, "go1.26.6-X:sizespecializedmalloc");
        assert_eq!(info.version, GoVersion::new(1, 26, 6));
        assert_eq!(info.main_path.as_deref(), Some("fixture"));
        assert_eq!(info.setting("-ldflags"), Some("-s -w"));
        assert_eq!(info.setting("-buildmode"), Some("pie"));
        assert_eq!(info.setting("CGO_ENABLED"), Some("0"));
        assert_eq!(info.settings.len(), 7);
        assert_eq!(info.experiments(), vec!["sizespecializedmalloc"]);
    }

    #[test]
    fn long_module_info_uses_multibyte_lengths() {
        let long = format!("{MODINFO}build\tvcs.revision={}\n", "a".repeat(300));
        let info = parse(&section("go1.21.13", &long, 2)).unwrap();
        assert_eq!(info.setting("vcs.revision").map(str::len), Some(300));
    }

    #[test]
    fn header_found_at_a_later_16_byte_boundary() {
        let mut s = vec![0u8; 48];
        s.extend(section("go1.22.10", MODINFO, 2));
        assert_eq!(parse(&s).unwrap().version, GoVersion::new(1, 22, 10));
    }

    #[test]
    fn pointer_format_is_refused_as_too_old() {
        let mut s = MAGIC.to_vec();
        s.extend_from_slice(&[8, 0]);
        s.resize(HEADER_SIZE, 0);
        assert_eq!(parse(&s), Err(BuildInfoError::TooOld { flags: 0 }));
        assert!(
            BuildInfoError::TooOld { flags: 0 }
                .to_string()
                .contains("Go 1.21 and newer")
        );
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let full = section("go1.23.9", MODINFO, 2);
        for len in 0..full.len() {
            let r = parse(&full[..len]);
            assert!(r.is_err(), "prefix of {len} bytes parsed as {r:?}");
        }
        assert_eq!(
            parse(b"not build info at all"),
            Err(BuildInfoError::NoMagic)
        );
        let r = parse(&section("gopher", MODINFO, 2));
        assert_eq!(r, Err(BuildInfoError::BadVersion("gopher".into())));
    }

    #[test]
    fn module_info_without_sentinels_is_ignored() {
        let mut s = MAGIC.to_vec();
        s.extend_from_slice(&[8, 2]);
        s.resize(HEADER_SIZE, 0);
        push_string(&mut s, b"go1.24.11");
        push_string(&mut s, b"path\tx\n");
        let info = parse(&s).unwrap();
        assert_eq!(info.main_path, None);
        assert!(info.settings.is_empty());
    }

    #[test]
    fn version_strings() {
        let v = |s| GoVersion::parse(s);
        assert_eq!(v("go1.25.5 X:arenas"), Some(GoVersion::new(1, 25, 5)));
        assert_eq!(v("go1.21rc2"), Some(GoVersion::new(1, 21, 0)));
        assert_eq!(v("devel go1.27-abcdef Tue"), Some(GoVersion::new(1, 27, 0)));
        assert_eq!(v("devel +abcdef"), None);
        assert_eq!(v("go1"), None);
        assert_eq!(GoVersion::new(1, 26, 6).to_string(), "go1.26.6");
        assert!(GoVersion::new(1, 21, 13) < GoVersion::new(1, 22, 0));
        assert!(GoVersion::new(1, 27, 9).is_tested());
        assert!(!GoVersion::new(1, 28, 0).is_tested());
        assert!(!GoVersion::new(1, 20, 14).is_tested());
        assert!(MIN_SUPPORTED < MAX_TESTED);
    }

    #[test]
    fn version_scan_prefers_the_full_frequent_version() {
        // The shape found in real binaries: the runtime's copy in .rodata between NULs, the
        // build info copy after its length byte, and GODEBUG-style mentions of older releases.
        // A version glued to a letter does not count, however often it appears.
        let data = b"\0\0go1.21\0\0go1.21\0\0go1.23.9\0\0\x08go1.23.9Xgo1.99.9Xgo1.99.9Xgo1.99.9";
        assert_eq!(version_from_bytes(data), Some(GoVersion::new(1, 23, 9)));
        assert_eq!(version_from_bytes(b"xgo1.22.1 ago1.22.1"), None);
        assert_eq!(version_from_bytes(b"\0go1.2345.1\0"), None);
        assert_eq!(
            version_from_bytes(b"\0go1.22.10\0"),
            Some(GoVersion::new(1, 22, 10))
        );
        assert_eq!(version_from_bytes(b""), None);
    }

    #[test]
    fn unquoting() {
        assert_eq!(
            unquote_prefix(r#""a\tb\x41\u00e9\101"="#),
            Some(("a\tbAéA".into(), 20))
        );
        assert_eq!(unquote_prefix("`raw \\n`x"), Some(("raw \\n".into(), 8)));
        assert_eq!(unquote_prefix("\"open"), None);
        assert_eq!(
            parse_build_setting("\"we=ird\"=\"v\""),
            Some(("we=ird".into(), "v".into()))
        );
        assert_eq!(parse_build_setting("=v"), None);
        assert_eq!(parse_build_setting("novalue"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&data);
            let _ = version_from_bytes(&data);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_header_never_panic(
            flags in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut s = MAGIC.to_vec();
            s.extend_from_slice(&[8, flags]);
            s.resize(HEADER_SIZE, 0);
            s.extend(tail);
            let _ = parse(&s);
        }

        #[test]
        fn arbitrary_module_info_never_panics(modinfo in ".{0,300}", version in "go1\\.[0-9]{1,3}.{0,10}") {
            let _ = parse(&section(&version, &modinfo, 2));
        }
    }
}
