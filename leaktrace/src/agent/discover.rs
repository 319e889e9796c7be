//! Which processes of the host the agent watches: every Go program the filters let through
//! (`--exe`, `--cgroup`, `--pid`, `--exclude`, and the same keys in `--config`), recognised
//! as `-p PID` recognises one (its buildinfo or version string, a supported Go release).
//!
//! Filters are checked from /proc at every scan (an executable's path and a cgroup are cheap
//! to read), so that a SIGHUP that changes them applies to the processes already known; what
//! a binary is (Go or not, which release) is learnt once per process.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::tracee::{
    Target,
    binary::{BinaryError, GoBinary},
    process::Process,
};

/// Which processes to watch. Kinds of filter narrow one after another (a process must pass
/// each kind given); the values of one kind are alternatives. `exclude` wins over all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Globs on the executable: its file name, or its whole path when the glob has a `/`.
    pub exe: Vec<String>,
    /// Cgroup paths (as in /proc/PID/cgroup, e.g. `/system.slice/api.service`): the process's
    /// cgroup is this one or below it.
    pub cgroup: Vec<String>,
    pub pid: Vec<u32>,
    /// Globs like `exe`'s: a process whose executable matches one is never watched.
    pub exclude: Vec<String>,
}

impl Filters {
    /// These filters and `other`'s, together.
    pub fn and(mut self, other: &Filters) -> Filters {
        self.exe.extend(other.exe.iter().cloned());
        self.cgroup.extend(other.cgroup.iter().cloned());
        self.pid.extend(other.pid.iter().copied());
        self.exclude.extend(other.exclude.iter().cloned());
        self
    }

    /// Reads a filter file: one `key = value` a line (`exe`, `cgroup`, `pid`, `exclude`, as
    /// the options of the same names), `#` starts a comment.
    pub fn read(path: &Path) -> anyhow::Result<Filters> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Filters> {
        let mut f = Filters::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!(
                    "line {}: {line:?} is not `key = value` (keys: exe, cgroup, pid, exclude)",
                    n + 1
                );
            };
            let value = value.trim().to_string();
            match key.trim() {
                "exe" => f.exe.push(value),
                "cgroup" => f.cgroup.push(value),
                "exclude" => f.exclude.push(value),
                "pid" => f.pid.push(value.parse().with_context(|| {
                    format!("line {}: pid {value:?} is not a process id", n + 1)
                })?),
                other => bail!(
                    "line {}: unknown key {other:?} (keys: exe, cgroup, pid, exclude)",
                    n + 1
                ),
            }
        }
        Ok(f)
    }

    /// Whether a process passes the filters, from what /proc says of it.
    pub fn admit(&self, pid: u32, exe: &Path, cgroup: impl FnOnce() -> Option<String>) -> bool {
        let exe_matches = |glob: &String| {
            let subject = if glob.contains('/') {
                exe.to_str()
            } else {
                exe.file_name().and_then(|n| n.to_str())
            };
            subject.is_some_and(|s| glob_match(glob.as_bytes(), s.as_bytes()))
        };
        if self.exclude.iter().any(exe_matches) {
            return false;
        }
        if !self.pid.is_empty() && !self.pid.contains(&pid) {
            return false;
        }
        if !self.exe.is_empty() && !self.exe.iter().any(exe_matches) {
            return false;
        }
        if !self.cgroup.is_empty() {
            let Some(cg) = cgroup() else { return false };
            return self.cgroup.iter().any(|want| under(&cg, want));
        }
        true
    }
}

/// `cg` is the cgroup `want` or one below it.
fn under(cg: &str, want: &str) -> bool {
    let want = want.trim_end_matches('/');
    want.is_empty()
        || cg == want
        || cg
            .strip_prefix(want)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A shell-style glob: `*` any run of characters, `?` one, everything else itself.
pub fn glob_match(glob: &[u8], s: &[u8]) -> bool {
    // Iterative, with one backtrack point: linear enough for file names.
    let (mut g, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, i));
                g += 1;
            }
            Some(&c) if c == b'?' || c == s[i] => {
                g += 1;
                i += 1;
            }
            _ => match star {
                Some((sg, si)) => {
                    g = sg + 1;
                    i = si + 1;
                    star = Some((sg, si + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// A process found in /proc: enough to filter it and to tell it from a later one that reuses
/// its PID.
#[derive(Clone, Debug)]
pub struct Found {
    pub pid: u32,
    /// Clock ticks after boot when it started (/proc/PID/stat field 22).
    pub start: u64,
    pub exe: PathBuf,
}

/// Every user-space process but this one (kernel threads have no executable).
pub fn scan() -> Vec<Found> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            Some(Found {
                pid,
                start: start_time(pid)?,
                exe,
            })
        })
        .collect()
}

/// /proc/PID/stat's starttime; the command name in parentheses may hold spaces.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // Field 3 (state) is the first after the name; starttime is field 22.
    rest.split(' ').nth(22 - 3)?.parse().ok()
}

/// The process's cgroup v2 path (`0::/system.slice/api.service`), or its first v1 one.
pub fn cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = |l: &str| l.splitn(3, ':').nth(2).map(str::to_string);
    text.lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| text.lines().next())
        .and_then(path)
}

/// The `service` label: the container's id (12 hex digits) when the cgroup path has one, else
/// the innermost systemd service unit, else the executable's file name.
pub fn service(cgroup: Option<&str>, exe: &Path) -> String {
    let exe_name = || {
        exe.file_name()
            .map_or_else(|| exe.display().to_string(), |n| n.to_string_lossy().into())
    };
    let Some(cg) = cgroup else {
        return exe_name();
    };
    let parts: Vec<&str> = cg.split('/').filter(|p| !p.is_empty()).collect();
    // docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope, or
    // a bare <id> directory (cgroupfs drivers, Kubernetes pods).
    for part in parts.iter().rev() {
        let id = part.trim_end_matches(".scope");
        let id = id.rsplit(['-', ':']).next().unwrap_or(id);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return id[..12].to_string();
        }
    }
    parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service"))
        .map_or_else(exe_name, |unit| unit.to_string())
}

/// What a process turned out to be.
pub enum Classified {
    /// A Go program leaktrace reads.
    Go(Box<Target>),
    /// A Go program it cannot read, and why (an unsupported release, say).
    Refused(String),
    /// Not a Go program (or gone): ignored without a word.
    Other,
}

/// Opens the process and its binary as `-p PID` does (after a cheap look at the binary's
/// section names, so that the host's other programs are not read whole).
pub fn classify(pid: u32) -> Classified {
    let process = match Process::open(pid) {
        Ok(p) => p,
        Err(_) => return Classified::Other,
    };
    if may_be_go(&process.exe_path()) == Some(false) {
        return Classified::Other;
    }
    let binary = match GoBinary::open(&process.exe_path()) {
        Ok(b) => b,
        Err(
            BinaryError::Read { .. }
            | BinaryError::NotElf { .. }
            | BinaryError::BadElf { .. }
            | BinaryError::NotGo { .. }
            | BinaryError::NoPclntab { .. },
        ) => return Classified::Other,
        Err(e) => return Classified::Refused(e.to_string()),
    };
    match Target::from_parts(process, binary) {
        Ok(t) => Classified::Go(Box::new(t)),
        Err(e) => Classified::Refused(format!("{e:#}")),
    }
}

/// Whether an ELF file's section names include one every Go linker writes (`.go.buildinfo`,
/// `.gopclntab`), from its header and section table alone: `None` when it has no section
/// table to tell (then only reading it whole can).
fn may_be_go(path: &Path) -> Option<bool> {
    use std::os::unix::fs::FileExt as _;
    let file = fs::File::open(path).ok()?;
    let read = |off: u64, len: usize| {
        let mut b = vec![0u8; len];
        file.read_exact_at(&mut b, off).ok().map(|_| b)
    };
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    // Shorter than an ELF header: not a program leaktrace reads.
    let Some(ehdr) = read(0, 64) else {
        return Some(false);
    };
    // A 64-bit little-endian ELF file (what leaktrace reads); anything else is not for us.
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Some(false);
    }
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&ehdr, 0x28),
        u16_at(&ehdr, 0x3a) as usize,
        u16_at(&ehdr, 0x3c) as usize,
        u16_at(&ehdr, 0x3e) as usize,
    );
    if shoff == 0 || shnum == 0 || shentsize < 64 || shstrndx >= shnum {
        return None;
    }
    let table = read(shoff, shnum.checked_mul(shentsize)?)?;
    let names_hdr = &table[shstrndx * shentsize..];
    let names = read(
        u64_at(names_hdr, 0x18),
        u64_at(names_hdr, 0x20).min(1 << 20) as usize,
    )?;
    let found = names
        .split(|&b| b == 0)
        .any(|n| n == b".go.buildinfo" || n == b".gopclntab");
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_binaries_are_told_by_their_section_names() {
        assert_eq!(
            may_be_go(Path::new("/proc/self/exe")),
            Some(false),
            "a Rust binary"
        );
        assert_eq!(
            may_be_go(Path::new("/etc/hostname")),
            Some(false),
            "not ELF"
        );
    }

    #[test]
    fn globs() {
        let m = |g: &str, s: &str| glob_match(g.as_bytes(), s.as_bytes());
        assert!(m("api-*", "api-server"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(!m("api-*", "web-api-1"));
        assert!(m("*leak*", "classicleak"));
        assert!(!m("*.go", "main.rs"));
    }

    #[test]
    fn filters_narrow_and_exclude_wins() {
        let f = Filters::parse(
            "# the API fleet\nexe = api-*\nexe = /opt/bin/*\ncgroup = /system.slice/\nexclude = api-debug\n",
        )
        .unwrap();
        let cg = |s: &'static str| move || Some(s.to_string());
        let ok = "/system.slice/api.service";
        assert!(f.admit(1, Path::new("/usr/bin/api-1"), cg(ok)));
        assert!(f.admit(1, Path::new("/opt/bin/web"), cg(ok)));
        assert!(!f.admit(1, Path::new("/usr/bin/web"), cg(ok)));
        assert!(!f.admit(1, Path::new("/usr/bin/api-debug"), cg(ok)));
        assert!(!f.admit(1, Path::new("/usr/bin/api-1"), cg("/user.slice/x")));
        assert!(!f.admit(1, Path::new("/usr/bin/api-1"), || None));
        assert!(Filters::default().admit(7, Path::new("/bin/x"), || None));
        let pids = Filters::parse("pid = 7").unwrap();
        assert!(pids.admit(7, Path::new("/bin/x"), || None));
        assert!(!pids.admit(8, Path::new("/bin/x"), || None));
        assert!(Filters::parse("pid = seven").is_err());
        assert!(Filters::parse("name = x").is_err());
        assert!(Filters::parse("exe api").is_err());
    }

    #[test]
    fn cgroups_are_matched_at_component_boundaries() {
        assert!(under("/system.slice/api.service", "/system.slice"));
        assert!(under(
            "/system.slice/api.service",
            "/system.slice/api.service"
        ));
        assert!(!under(
            "/system.slice/api.service2",
            "/system.slice/api.service"
        ));
        assert!(under("/anything", "/"));
    }

    #[test]
    fn services_from_cgroups() {
        let exe = Path::new("/usr/bin/api");
        let id = "4f1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
        assert_eq!(
            service(Some(&format!("/system.slice/docker-{id}.scope")), exe),
            "4f1b2c3d4e5f"
        );
        assert_eq!(
            service(
                Some(&format!(
                    "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
                )),
                exe
            ),
            "4f1b2c3d4e5f"
        );
        assert_eq!(
            service(Some(&format!("/kubepods/burstable/pod1/{id}")), exe),
            "4f1b2c3d4e5f"
        );
        assert_eq!(
            service(Some("/system.slice/api.service"), exe),
            "api.service"
        );
        assert_eq!(
            service(Some("/user.slice/user-0.slice/session-3.scope"), exe),
            "api"
        );
        assert_eq!(service(None, exe), "api");
    }
}
