//! What tracing needs from the kernel, checked once before anything is loaded so that a
//! missing feature is named, with what to do, instead of surfacing as a loader error.
//!
//! The BPF side needs: the BPF ring buffer (Linux 5.8, the newest of its needs),
//! `bpf_probe_read_user` (5.5), uprobes with the perf-event PID filter (the uprobe PMU of
//! 4.17, or tracefs' `uprobe_events`), stack trace maps and LRU hashes (4.10), and tracefs for
//! the `syscalls:sys_enter_madvise` tracepoint. Kernel BTF is not among them: the programs
//! read only the target's user memory and the tracepoint's fixed arguments, so the object
//! carries no CO-RE relocation. `dump` loads nothing and needs none of this.

use std::{ffi::CString, io, path::Path};

/// Where tracefs is mounted today, and where `mount -t tracefs` puts it.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where kernels before 4.1 (and some set-ups since) expose it, under debugfs.
const TRACEFS_DEBUGFS: &str = "/sys/kernel/debug/tracing";
/// The uprobe PMU (4.17+): perf_event_open places a uprobe from it without tracefs.
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";

/// What the checks read from the machine, so that the decisions can be tested on fakes.
pub struct Probe<'a> {
    /// The root the sysfs paths above are read under (`/` on a real machine).
    pub root: &'a Path,
    /// Whether the kernel creates a BPF ring buffer map.
    pub ring_buffer: fn() -> io::Result<bool>,
    /// Mounts tracefs at the given path.
    pub mount_tracefs: fn(&Path) -> io::Result<()>,
}

/// Checks this machine's kernel; mounts tracefs if it is not mounted (as `mount -t tracefs
/// nodev /sys/kernel/tracing` would). The error names the missing feature and what to do.
pub fn check() -> Result<(), String> {
    check_with(&Probe {
        root: Path::new("/"),
        ring_buffer,
        mount_tracefs,
    })
}

/// [`check`] against what `probe` reads.
pub fn check_with(probe: &Probe) -> Result<(), String> {
    match (probe.ring_buffer)() {
        Ok(true) => {}
        Ok(false) => {
            return Err(
                "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8 and newer), which carries the probes' records; run leaktrace on Linux 5.8 or newer (`leaktrace dump -p PID` works without it)"
                    .into(),
            );
        }
        Err(e) => {
            return Err(format!(
                "cannot ask the kernel whether it has the BPF ring buffer: {e}; is bpf(2) allowed here (not blocked by seccomp, kernel.unprivileged_bpf_disabled with a non-root user)?"
            ));
        }
    }
    let tracefs = tracefs(probe)?;
    let pmu = probe.root.join(UPROBE_PMU.trim_start_matches('/')).exists();
    if !pmu && !tracefs.join("uprobe_events").exists() {
        return Err(format!(
            "this kernel has no uprobes: neither the uprobe PMU ({UPROBE_PMU}) nor {}/uprobe_events exists; leaktrace needs a kernel built with CONFIG_UPROBE_EVENTS (Debian's and most distributions' are)",
            tracefs.display()
        ));
    }
    Ok(())
}

/// Where tracefs is, mounting it at /sys/kernel/tracing if it is nowhere.
fn tracefs(probe: &Probe) -> Result<std::path::PathBuf, String> {
    let at = |p: &str| probe.root.join(p.trim_start_matches('/'));
    // Like aya: a mount point is a directory with entries (the kernel creates an empty
    // /sys/kernel/tracing even where tracefs is mounted under debugfs only).
    let mounted = |p: &Path| p.read_dir().is_ok_and(|mut d| d.next().is_some());
    if let Some(p) = [at(TRACEFS), at(TRACEFS_DEBUGFS)]
        .into_iter()
        .find(|p| mounted(p))
    {
        return Ok(p);
    }
    let target = at(TRACEFS);
    match (probe.mount_tracefs)(&target) {
        Ok(()) if mounted(&target) => {
            eprintln!("leaktrace: mounted tracefs on {TRACEFS}");
            Ok(target)
        }
        Ok(()) => Err(format!(
            "tracefs mounted on {} but empty; leaktrace needs tracefs for the madvise tracepoint",
            target.display()
        )),
        Err(e) => Err(format!(
            "tracefs is not mounted and cannot be mounted on {} ({e}); leaktrace needs it for the madvise tracepoint: mount it (mount -t tracefs nodev {TRACEFS}), or in a container give the host's /sys/kernel/tracing",
            target.display()
        )),
    }
}

/// Asks the kernel to create a BPF ring buffer map (and closes it).
fn ring_buffer() -> io::Result<bool> {
    aya::sys::is_map_supported(aya::maps::MapType::RingBuf).map_err(io::Error::other)
}

fn mount_tracefs(at: &Path) -> io::Result<()> {
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yes() -> io::Result<bool> {
        Ok(true)
    }
    fn no() -> io::Result<bool> {
        Ok(false)
    }
    fn denied(_: &Path) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
    /// A tracefs mount: the directory gets its entries.
    fn fills(at: &Path) -> io::Result<()> {
        std::fs::create_dir_all(at.join("events"))?;
        std::fs::write(at.join("uprobe_events"), "")
    }

    /// A scratch root under the system temp dir, removed when dropped.
    struct Root(std::path::PathBuf);

    impl std::ops::Deref for Root {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A scratch root with an empty /sys/kernel/tracing and the given files.
    fn root(name: &str, files: &[&str]) -> Root {
        let dir =
            std::env::temp_dir().join(format!("leaktrace-kernel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sys/kernel/tracing")).unwrap();
        for f in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        Root(dir)
    }

    fn check_at(
        root: &Path,
        ring_buffer: fn() -> io::Result<bool>,
        mount: fn(&Path) -> io::Result<()>,
    ) -> Result<(), String> {
        check_with(&Probe {
            root,
            ring_buffer,
            mount_tracefs: mount,
        })
    }

    #[test]
    fn a_complete_kernel_passes() {
        let r = root(
            "ok",
            &[
                "sys/kernel/tracing/uprobe_events",
                UPROBE_PMU.trim_start_matches('/'),
            ],
        );
        assert_eq!(check_at(&r, yes, denied), Ok(()));
        // tracefs under debugfs only, uprobes from tracefs only.
        let r = root("debugfs", &["sys/kernel/debug/tracing/uprobe_events"]);
        assert_eq!(check_at(&r, yes, denied), Ok(()));
    }

    #[test]
    fn no_ring_buffer_is_named() {
        let r = root("ringbuf", &["sys/kernel/tracing/uprobe_events"]);
        let e = check_at(&r, no, denied).unwrap_err();
        assert!(e.contains("no BPF ring buffer") && e.contains("5.8"), "{e}");
    }

    #[test]
    fn tracefs_is_mounted_or_named() {
        let r = root("mount", &[UPROBE_PMU.trim_start_matches('/')]);
        assert_eq!(check_at(&r, yes, fills), Ok(()));
        let r = root("nomount", &[UPROBE_PMU.trim_start_matches('/')]);
        let e = check_at(&r, yes, denied).unwrap_err();
        assert!(
            e.contains("tracefs is not mounted and cannot be mounted"),
            "{e}"
        );
        assert!(e.contains("mount -t tracefs"), "{e}");
    }

    #[test]
    fn no_uprobes_is_named() {
        let r = root("uprobes", &["sys/kernel/tracing/trace"]);
        let e = check_at(&r, yes, denied).unwrap_err();
        assert!(
            e.contains("no uprobes") && e.contains("CONFIG_UPROBE_EVENTS"),
            "{e}"
        );
    }
}
