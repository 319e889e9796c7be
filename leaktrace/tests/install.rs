//! leaktrace as a user installs it, built by `cargo xtask dist` (once for both tests, cached
//! by cargo's target dir):
//!
//! - the tarball unpacked into an empty directory, run with `chroot` in a fresh mount
//!   namespace holding only that directory, /proc, /sys and a Go fixture (no libc, no
//!   toolchain): `--version`, `dump -p PID` and a 5-second `record` of a leaking fixture work,
//!   without kernel BTF and with tracefs unmounted (leaktrace mounts it); and where tracefs
//!   cannot be mounted, leaktrace refuses and names it;
//! - the .deb installed with dpkg: `man leaktrace`, bash completion and `leaktrace -p PID`
//!   from PATH work, and `dpkg -r` leaves nothing of it behind.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::Duration,
};

use support::*;

/// `cargo xtask dist`, once: the tarball's and the .deb's paths.
fn dist() -> &'static (PathBuf, PathBuf) {
    static DIST: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIST.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["run", "-q", "-p", "xtask", "--", "dist"])
            .current_dir(repo_root())
            .output()
            .expect("running cargo xtask dist");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo xtask dist failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let version = env!("CARGO_PKG_VERSION");
        let dist = repo_root().join("dist");
        let tar = dist.join(format!("leaktrace-{version}-x86_64-linux.tar.gz"));
        let deb = dist.join(format!("leaktrace_{version}_amd64.deb"));
        let sums = fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
        for f in [&tar, &deb] {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(sums.contains(name), "SHA256SUMS names {name}:\n{sums}");
        }
        let check = Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(&dist)
            .output()
            .unwrap();
        assert!(check.status.success(), "sha256sum --check: {check:?}");
        (tar, deb)
    })
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The newest Go's classicleak, copied into `dir`.
fn fixture_into(dir: &Path) -> PathBuf {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let to = dir.join("classicleak");
    fs::copy(bin, &to).unwrap();
    to
}

/// Runs `/BIN ARGS` chrooted into `root` in a fresh mount namespace, where `root` gets a
/// new proc and a new sysfs (so tracefs is not mounted there) and nothing else; `before`
/// is shell run first with `$r` set to the root (to take features away).
fn in_root(root: &Path, before: &str, bin: &str, args: &[&str]) -> Output {
    let script = format!(
        r#"r=$1; shift
mkdir -p "$r/proc" "$r/sys"
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
{before}
exec chroot "$r" "$@""#
    );
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-ec",
            &script,
            "sh",
        ])
        .arg(root)
        .arg(bin)
        .args(args)
        .output()
        .expect("running unshare")
}

#[test]
fn tarball_runs_alone_in_an_empty_root() {
    let (tar, _) = dist();
    let root = std::env::temp_dir().join(format!("leaktrace-install-root-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(tar)
        .arg("-C")
        .arg(&root)
        .output()
        .unwrap();
    assert!(untar.status.success(), "{}", text(&untar));
    let dir = format!("leaktrace-{}-x86_64-linux", env!("CARGO_PKG_VERSION"));
    let mut files: Vec<String> = walk(&root.join(&dir));
    files.sort();
    assert_eq!(
        files,
        [
            "LICENSE-APACHE",
            "LICENSE-MIT",
            "README.md",
            "completions/_leaktrace",
            "completions/leaktrace.bash",
            "completions/leaktrace.fish",
            "leaktrace",
            "man/leaktrace-agent.1",
            "man/leaktrace-completions.1",
            "man/leaktrace-dump.1",
            "man/leaktrace-record.1",
            "man/leaktrace-top.1",
            "man/leaktrace-trace.1",
            "man/leaktrace.1",
        ]
    );
    let kind = Command::new("file")
        .arg("-b")
        .arg(root.join(&dir).join("leaktrace"))
        .output()
        .unwrap();
    let kind = String::from_utf8_lossy(&kind.stdout);
    assert!(kind.contains("static"), "not a static binary: {kind}");
    let fixture = fixture_into(&root);
    let bin = format!("/{dir}/leaktrace");

    // --version names the commit and the Go releases read.
    let out = in_root(&root, "", &bin, &["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(
        version.contains(&format!("(commit {})", head.trim())),
        "{version}"
    );
    assert!(version.contains("reads Go 1.21 to 1.27"), "{version}");

    // Nothing but the tarball, the fixture, /proc and /sys in the root.
    let mut top: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["classicleak", dir.as_str(), "proc", "sys"]);

    let mut fx = Fixture::start(&fixture, &["-hold"]);
    fx.stderr.wait_for("holding", Duration::from_secs(10));
    let pid = fx.pid().to_string();

    let out = in_root(&root, "", &bin, &["dump", "-p", &pid]);
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        dump.contains("5 goroutines [chan send]") && dump.contains("main.produce"),
        "{dump}"
    );

    // A 5-second record, with kernel BTF hidden: leaktrace's programs do not need it.
    let out = in_root(
        &root,
        r#"mount -t tmpfs -o ro,size=4k none "$r/sys/kernel/btf""#,
        &bin,
        &[
            "record",
            "-p",
            &pid,
            "-d",
            "5s",
            "--min-age",
            "1s",
            "--max-overhead",
            "off",
            "-o",
            "/out",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mounted tracefs on /sys/kernel/tracing"),
        "the fresh sysfs had no tracefs: {stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join("out/report.json")).unwrap()).unwrap();
    let l = &report["leaks"][0];
    assert_eq!(l["site"]["function"], "main.produce", "{report}");
    assert_eq!(l["count"], 5, "{l}");
    assert!(
        report["probes"]["attached"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "probes attached: {}",
        report["probes"]
    );

    // Where tracefs cannot be mounted (no /sys/kernel/tracing to mount it on), leaktrace
    // refuses and says so, before loading anything.
    let out = in_root(
        &root,
        r#"mount -t tmpfs -o ro,size=4k none "$r/sys/kernel""#,
        &bin,
        &["-p", &pid, "-d", "2s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("tracefs is not mounted and cannot be mounted"),
        "{stderr}"
    );
    drop(fx);
    fs::remove_dir_all(&root).unwrap();
}

/// The files under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
        if p.is_dir() {
            out.extend(walk(&p).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    out
}

fn sh(script: &str) -> Output {
    Command::new("bash").args(["-c", script]).output().unwrap()
}

#[test]
fn deb_installs_works_from_path_and_removes_cleanly() {
    let (_, deb) = dist();
    // A package left by an interrupted run of this test goes first.
    let _ = Command::new("dpkg").args(["-r", "leaktrace"]).output();
    let listed = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    // dpkg-deb -c: "-rwxr-xr-x root/root 123 2026-01-01 00:00 ./usr/bin/leaktrace".
    let files: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    for f in [
        "/usr/bin/leaktrace",
        "/usr/share/man/man1/leaktrace.1.gz",
        "/usr/share/bash-completion/completions/leaktrace",
        "/usr/share/zsh/vendor-completions/_leaktrace",
        "/usr/share/fish/vendor_completions.d/leaktrace.fish",
        "/usr/lib/systemd/system/leaktrace-agent.service",
    ] {
        assert!(
            files.iter().any(|p| p == f),
            "{f} not in the package: {files:?}"
        );
    }
    // Every path dpkg will own that is not there yet (files, and directories such as
    // /usr/share/doc/leaktrace) must be gone again after dpkg -r.
    let new_paths: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty() && !Path::new(p).exists())
        .collect();
    for f in &files {
        assert!(
            !Path::new(f).exists(),
            "{f} exists before the package is installed"
        );
    }
    let info = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg("Description")
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Linux 5.8") && info.contains("uprobes"),
        "{info}"
    );

    let install = Command::new("dpkg").arg("-i").arg(deb).output().unwrap();
    assert!(install.status.success(), "dpkg -i: {}", text(&install));
    let dpkg_l = Command::new("dpkg")
        .args(["-L", "leaktrace"])
        .output()
        .unwrap();
    let owned = String::from_utf8_lossy(&dpkg_l.stdout).into_owned();
    for f in &files {
        assert!(owned.lines().any(|l| l == f), "dpkg -L lacks {f}:\n{owned}");
        assert!(Path::new(f).is_file(), "{f} not installed");
    }

    let man = sh("MANPAGER=cat MANWIDTH=100 man leaktrace 2>&1");
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success(), "man leaktrace: {}", text(&man));
    assert!(
        page.contains("--max-overhead") && page.contains("leaktrace-record(1)"),
        "{page}"
    );

    // bash-completion loads the script on demand, as in an interactive shell.
    let comp = sh(r#"source /usr/share/bash-completion/bash_completion
__load_completion leaktrace || exit 2
f=$(complete -p leaktrace | sed -E 's/.*-F ([^ ]+).*/\1/')
COMP_WORDS=(leaktrace rec); COMP_CWORD=1; COMP_LINE="leaktrace rec"; COMP_POINT=${#COMP_LINE}
"$f" leaktrace rec leaktrace
printf '%s\n' "${COMPREPLY[@]}"
COMP_WORDS=(leaktrace --max-o); COMP_LINE="leaktrace --max-o"; COMP_POINT=${#COMP_LINE}
"$f" leaktrace --max-o leaktrace
printf '%s\n' "${COMPREPLY[@]}""#);
    let words = String::from_utf8_lossy(&comp.stdout);
    assert!(comp.status.success(), "bash completion: {}", text(&comp));
    assert_eq!(
        words.lines().collect::<Vec<_>>(),
        ["record", "--max-overhead"],
        "{}",
        text(&comp)
    );

    // leaktrace from PATH, as a user runs it.
    let fixture = build_fixture("classicleak", &go_versions().pop().unwrap(), &[]);
    let mut fx = Fixture::start(&fixture, &["-hold"]);
    fx.stderr.wait_for("holding", Duration::from_secs(10));
    let out = Command::new("leaktrace")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args(["-p", &fx.pid().to_string(), "-d", "3s", "--min-age", "1s"])
        .output()
        .unwrap();
    drop(fx);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "leaktrace -p: {}", text(&out));
    assert!(
        report.contains("5 goroutines [chan send]") && report.contains("main.produce"),
        "{}",
        text(&out)
    );

    let remove = Command::new("dpkg")
        .args(["-r", "leaktrace"])
        .output()
        .unwrap();
    assert!(remove.status.success(), "dpkg -r: {}", text(&remove));
    assert!(new_paths.iter().any(|p| p == "/usr/share/doc/leaktrace"));
    for p in &new_paths {
        assert!(!Path::new(p).exists(), "{p} left behind by dpkg -r");
    }
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "leaktrace"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "dpkg still knows leaktrace: {status}"
    );
}
