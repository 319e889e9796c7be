//! Shared by the integration tests: Go toolchains from the project's cache, fixtures built
//! from `testdata/go/<name>` with any Go version and cached by content hash, and helpers to
//! run leaktrace against them.
#![allow(dead_code)]

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::Hasher as _,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LEAKTRACE_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    base.join("leaktrace")
}

/// The Go versions under test: scripts/versions.sh's GO_VERSIONS, or LEAKTRACE_GO_VERSIONS
/// (space separated) to run a subset.
pub fn go_versions() -> Vec<String> {
    if let Ok(v) = std::env::var("LEAKTRACE_GO_VERSIONS") {
        return v.split_whitespace().map(String::from).collect();
    }
    let text = fs::read_to_string(repo_root().join("scripts/versions.sh")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("GO_VERSIONS="))
        .expect("GO_VERSIONS in versions.sh");
    line.trim_matches('"')
        .split_whitespace()
        .map(String::from)
        .collect()
}

pub fn go_binary(version: &str) -> PathBuf {
    let go = cache_dir().join("go").join(version).join("go/bin/go");
    assert!(
        go.exists(),
        "Go {version} is not installed at {}: run scripts/setup.sh",
        go.display()
    );
    go
}

/// How long a test waits for a line or an exit: the time it names, and never under
/// [`MIN_PATIENCE`]. These waits catch hangs; how fast things go depends on the machine (a
/// probe hit costs 10-18 us on these VMs, 2x apart) and on what else loads its two CPUs,
/// and a wait tuned on an idle machine fails on a busy one.
pub fn patience(named: Duration) -> Duration {
    named.max(MIN_PATIENCE)
}

/// The shortest wait for anything a test waits for.
pub const MIN_PATIENCE: Duration = Duration::from_secs(90);

/// Builds `testdata/go/<name>` with Go `version` and extra `go build` flags; cached under
/// the project's cache by a hash of the sources, the version and the flags.
pub fn build_fixture(name: &str, version: &str, flags: &[&str]) -> PathBuf {
    build_fixture_with(name, version, &go_binary(version), flags, &[])
}

/// [`build_fixture`] with any `go` command (`label` names it in the cache) and extra
/// environment for it, such as `GOARCH=arm64` or `CGO_ENABLED=1`.
pub fn build_fixture_with(
    name: &str,
    label: &str,
    go: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
) -> PathBuf {
    let version = label;
    let src = repo_root().join("testdata/go").join(name);
    let mut files: Vec<PathBuf> = fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", src.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    h.update(version.as_bytes());
    for f in flags {
        h.update(b"\0flag\0");
        h.update(f.as_bytes());
    }
    for (k, v) in env {
        h.update(format!("\0env\0{k}={v}").as_bytes());
    }
    for f in &files {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update(fs::read(f).unwrap());
    }
    let hash: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache_dir()
        .join("fixtures")
        .join(format!("{name}-{version}-{hash}"));
    let out = dir.join(name);
    if out.exists() {
        return out;
    }
    fs::create_dir_all(&dir).unwrap();
    // Build to a unique name and rename, so parallel tests never see a half-written binary.
    let mut tmp_name = DefaultHasher::new();
    tmp_name.write_u32(std::process::id());
    tmp_name.write_u64(Instant::now().elapsed().as_nanos() as u64 ^ thread_id());
    let tmp = dir.join(format!(".{name}.{:x}", tmp_name.finish()));
    let cache = cache_dir();
    let output = Command::new(go)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTELEMETRY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        .envs(env.iter().copied())
        .output()
        .expect("running go build");
    assert!(
        output.status.success(),
        "go build of {name} with Go {version} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&tmp, &out).unwrap();
    out
}

fn thread_id() -> u64 {
    let mut h = DefaultHasher::new();
    h.write(format!("{:?}", thread::current().id()).as_bytes());
    h.finish()
}

pub fn leaktrace_bin() -> PathBuf {
    // Cargo names the binary to integration tests; an example sharing these helpers gets
    // the release build.
    option_env!("CARGO_BIN_EXE_leaktrace")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/leaktrace"))
}

/// Lines of a child's stderr, read on a thread so that a test can wait for one with a
/// timeout while the rest is kept.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(r: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; panics with everything seen after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let timeout = patience(timeout);
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything until the writer closes.
    pub fn rest(mut self) -> Vec<String> {
        while let Ok(line) = self.rx.recv() {
            self.seen.push(line);
        }
        self.seen
    }
}

/// A Go fixture started with piped stdio; `go_on()` writes the line it waits for.
pub struct Fixture {
    pub child: Child,
    pub stderr: Lines,
}

impl Fixture {
    pub fn start(bin: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting fixture");
        let stderr: ChildStderr = child.stderr.take().unwrap();
        Self {
            child,
            stderr: Lines::new(stderr),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go_on(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin and collects stdout and the exit code.
    pub fn finish(mut self) -> (String, Option<i32>) {
        drop(self.child.stdin.take());
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = self.child.wait().unwrap();
        (out, status.code())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// leaktrace started against a PID, with its stdout and stderr piped.
pub struct Tracer {
    pub child: Child,
    pub stderr: Lines,
}

impl Tracer {
    pub fn attach(pid: u32, extra: &[&str]) -> Self {
        let pid = pid.to_string();
        let mut t = Self::start(&[&["-p", pid.as_str()][..], extra].concat());
        t.stderr
            .wait_for("attached to PID", Duration::from_secs(30));
        t
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for leaktrace to exit; returns (stdout, stderr lines, exit code).
    pub fn finish(mut self, timeout: Duration) -> (String, Vec<String>, Option<i32>) {
        let timeout = patience(timeout);
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                let Tracer { stderr, .. } = self;
                return (out, stderr.rest(), status.code());
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("leaktrace did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The first byte of a function in the target's memory: 0xCC (int3) while a uprobe sits
/// there, the original instruction byte otherwise.
pub fn first_byte_in_target(pid: u32, addr: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8; 1];
    mem.read_exact_at(&mut b, addr).unwrap();
    b[0]
}

/// Where the target maps link-time address `addr` of its binary: the address plus the load
/// bias, read from /proc/PID/maps (PIE binaries are mapped at a random base).
pub fn runtime_address(pid: u32, bin: &Path, addr: u64) -> u64 {
    use object::{Object, ObjectSegment};
    let data = fs::read(bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let first = file
        .segments()
        .find(|s| s.file_range().0 == 0)
        .unwrap()
        .address();
    let exe = fs::canonicalize(bin).unwrap();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let start = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && Path::new(f[5]) == exe && u64::from_str_radix(f[2], 16) == Ok(0))
                .then(|| u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{} not mapped in {pid}", exe.display()));
    addr + start - (first & !0xfff)
}

/// The address of a function symbol in a non-PIE binary, from its symbol table.
pub fn symbol_address(bin: &Path, name: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let data = fs::read(bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} not in {}", bin.display()))
        .address()
}

/// Where leaktrace's probe on the entry of `name` traps: the frame's `push rbp` after Go's
/// stack check ([`leaktrace::tracee::code::entry_probe_address`]), which the kernel
/// emulates. Checked here to hold a `push rbp` (0x55) in the file, past the entry.
pub fn probe_address(bin: &Path, name: &str) -> u64 {
    let binary = leaktrace::tracee::binary::GoBinary::open(bin).unwrap();
    let entry = symbol_address(bin, name);
    let at = leaktrace::tracee::code::entry_probe_address(&binary, entry);
    assert!(at > entry, "{name}: the probe stays on the entry");
    assert_eq!(
        binary.read_vaddr(at, 1),
        Some(&[0x55u8][..]),
        "{name}: the probe is not on a push rbp"
    );
    at
}

/// Parks of every wait reason, as report.json counts them (scaled when sampled).
pub fn total_parks(r: &serde_json::Value) -> u64 {
    r["parks"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// Runs `leaktrace record -o <fresh directory named after NAME> ARGS` to completion and
/// panics with its output if it fails. Returns report.json and leaktrace's stdout (which
/// holds a spawned target's output too).
pub fn record(name: &str, args: &[&str]) -> (serde_json::Value, String) {
    let dir = std::env::temp_dir().join(format!("leaktrace-record-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let out = Command::new(leaktrace_bin())
        .arg("record")
        .arg("-o")
        .arg(&dir)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "leaktrace record {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Beside the report, for a test that fails on what it says (with RUST_LOG set, the
    // windows' and snapshots' debug lines).
    fs::write(dir.join("stderr.txt"), &out.stderr).unwrap();
    let report = fs::read_to_string(dir.join("report.json")).unwrap();
    (serde_json::from_str(&report).unwrap(), stdout)
}

/// The line of `testdata/go/<fixture>/main.go` containing `text` (exactly one must).
pub fn line_of_in(fixture: &str, text: &str) -> u32 {
    let src = fs::read_to_string(
        repo_root()
            .join("testdata/go")
            .join(fixture)
            .join("main.go"),
    )
    .unwrap();
    let hits: Vec<usize> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(text))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "exactly one line of {fixture}/main.go should contain {text:?}"
    );
    hits[0] as u32
}

/// The ids of the BPF programs a process holds open, from its fdinfo.
pub fn programs_held_by(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.unwrap().path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .map(|v| v.trim().parse().unwrap())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of `ids` are still loaded in the kernel, once it had up to 3 s to free them.
pub fn still_loaded(ids: &[u32]) -> Vec<u32> {
    // A multi-uprobe link takes its breakpoints out when it is closed, but the kernel lets
    // go of its program only after a grace period (bpf_uprobe_multi_link_dealloc, deferred
    // with call_rcu_tasks_trace): up to a second or so on a busy VM after leaktrace exits.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Tracer {
    /// Starts leaktrace with `args` (a subcommand and options), without waiting for anything.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(leaktrace_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leaktrace");
        let stderr = Lines::new(child.stderr.take().unwrap());
        Self { child, stderr }
    }
}
