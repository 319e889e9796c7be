//! The target process as the kernel shows it: does it exist, which binary it runs, where that
//! binary is mapped (the PIE load bias), and read-only copies of its memory.
//!
//! Nothing here writes to the target, stops it, or signals it: memory is read with
//! `process_vm_readv`, and liveness is watched through a pidfd.

use std::{
    fs, io,
    os::{
        fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::PathBuf,
};

/// Why a process cannot be traced, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with PID {0}: check the PID (`pgrep -f NAME` finds it by name)")]
    NoSuchProcess(u32),
    #[error(
        "PID {pid} is a kernel thread or has exited (no /proc/{pid}/exe); give the PID of a running Go program"
    )]
    NoExecutable { pid: u32 },
    #[error("cannot inspect PID {pid}: {source}; leaktrace needs root or CAP_SYS_PTRACE")]
    Access { pid: u32, source: io::Error },
    #[error("PID {pid}: cannot find {exe} in /proc/{pid}/maps to compute its load address")]
    NotMapped { pid: u32, exe: String },
    #[error("PID {pid}: {source}")]
    Io { pid: u32, source: io::Error },
}

/// A running process, held by a pidfd so that its PID cannot be reused under us.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: OwnedFd,
    exe_dev: u64,
    exe_ino: u64,
    /// The binary it ran when opened, held open: probes are placed through it (see
    /// [`Process::probe_path`]). None where it could not be opened.
    exe: Option<fs::File>,
}

impl Process {
    pub fn open(pid: u32) -> Result<Self, ProcessError> {
        Self::open_running(pid, None)
    }

    /// A child leaktrace spawned with `program`, which may already have run to its end (a
    /// zombie, not yet reaped, has no /proc/PID/exe): its binary is identified by the file.
    pub fn open_spawned(pid: u32, program: &std::path::Path) -> Result<Self, ProcessError> {
        let meta = fs::metadata(program).map_err(|source| ProcessError::Io { pid, source })?;
        Self::open_running(pid, Some((meta, program)))
    }

    fn open_running(
        pid: u32,
        exe_meta: Option<(fs::Metadata, &std::path::Path)>,
    ) -> Result<Self, ProcessError> {
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(ProcessError::NoSuchProcess(pid));
        }
        // SAFETY: plain syscall; the returned fd is owned by us on success.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ESRCH) => ProcessError::NoSuchProcess(pid),
                Some(libc::EPERM) | Some(libc::EACCES) => ProcessError::Access { pid, source: err },
                _ => ProcessError::Io { pid, source: err },
            });
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let (meta, exe) = match exe_meta {
            Some((m, program)) => (m, fs::File::open(program).ok()),
            None => {
                let path = format!("/proc/{pid}/exe");
                let exe = fs::File::open(&path).ok();
                // The open file's own metadata where it opened: the binary held is the one
                // identified, even if the target execs between the two.
                let meta = match exe.as_ref().map(|f| f.metadata()) {
                    Some(Ok(m)) => m,
                    _ => fs::metadata(&path).map_err(|e| match e.raw_os_error() {
                        Some(libc::ENOENT) => ProcessError::NoExecutable { pid },
                        Some(libc::EPERM) | Some(libc::EACCES) => {
                            ProcessError::Access { pid, source: e }
                        }
                        _ => ProcessError::Io { pid, source: e },
                    })?,
                };
                (meta, exe)
            }
        };
        Ok(Self {
            pid,
            pidfd,
            exe_dev: meta.dev(),
            exe_ino: meta.ino(),
            exe,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `/proc/PID/exe`: opening it reaches the binary even when it lives in another mount
    /// namespace (a container) or was deleted after it started.
    pub fn exe_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/exe", self.pid))
    }

    /// The path to place uprobes through: leaktrace's own descriptor of the binary the
    /// target ran when it was opened (`/proc/self/fd/N`), else `/proc/PID/exe`. A uprobe
    /// goes on a file, at offsets read from that file: placed through `/proc/PID/exe` after
    /// the target exec'd another program, it would land in the new program at offsets that
    /// mean nothing there (mid-instruction, a corrupted instruction). Through the held
    /// file, it lands in the binary the offsets came from, which the target no longer maps:
    /// no breakpoint anywhere in it.
    pub fn probe_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        match &self.exe {
            Some(f) => PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
            None => self.exe_path(),
        }
    }

    /// The binary's path as the target sees it, for messages.
    pub fn exe_name(&self) -> String {
        fs::read_link(self.exe_path())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| self.exe_path().display().to_string())
    }

    /// Readable when the process exits (see `pidfd_open(2)`).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// False once the process has exited, reaped or not: a zombie has no memory to read
    /// and no code to probe (`/proc/PID/exe` is gone), though it can still be signalled.
    pub fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd_raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait. The pidfd is readable once the process exits.
        match unsafe { libc::poll(&mut poll, 1, 0) } {
            0 => return true,
            n if n > 0 => return poll.revents & libc::POLLIN == 0,
            _ => {}
        }
        // SAFETY: signal 0 only checks that the process can be signalled; nothing is sent.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd_raw(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }

    fn pidfd_raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.pidfd.as_raw_fd()
    }

    /// True when the process now runs another binary than when it was opened (it called
    /// execve): its addresses and runtime layout no longer apply.
    pub fn has_execed(&self) -> bool {
        match fs::metadata(self.exe_path()) {
            Ok(m) => m.dev() != self.exe_dev || m.ino() != self.exe_ino,
            Err(_) => false,
        }
    }

    /// The load bias of the main binary: what to add to a link-time address to get the
    /// address in the process. 0 for a non-PIE binary. `first_load_vaddr` is the virtual
    /// address of the binary's first PT_LOAD segment (the one with file offset 0).
    pub fn load_bias(&self, first_load_vaddr: u64) -> Result<u64, ProcessError> {
        let maps = procfs::process::Process::new(self.pid as i32)
            .and_then(|p| p.maps())
            .map_err(|e| ProcessError::Io {
                pid: self.pid,
                source: io::Error::other(e.to_string()),
            })?;
        let page = 4096u64;
        maps.iter()
            .find(|m| m.inode == self.exe_ino && m.offset == 0)
            .map(|m| m.address.0.wrapping_sub(first_load_vaddr & !(page - 1)))
            .ok_or_else(|| ProcessError::NotMapped {
                pid: self.pid,
                exe: self.exe_name(),
            })
    }

    /// Copies `buf.len()` bytes at `addr` of the target into `buf`, without stopping it.
    /// A partial copy (the range crosses into unmapped memory) is an error.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` covers exactly `buf`, which we own mutably; the remote range is
        // only read by the kernel, which checks it.
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read at {addr:#x}: {n} of {} bytes", buf.len()),
            ));
        }
        Ok(())
    }

    /// Reads several ranges in one system call: `ranges[i]` lands in the next `len` bytes of
    /// `buf`, in order. Falls back to one read per range when the batch cannot be read whole.
    pub fn read_many(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> io::Result<()> {
        let total: usize = ranges.iter().map(|r| r.1).sum();
        if total > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer smaller than the ranges",
            ));
        }
        let local = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: total,
        }];
        let remote: Vec<libc::iovec> = ranges
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: `local` covers `total` bytes of `buf`, which we own mutably; the remote
        // ranges are only read by the kernel, which checks them.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid as i32,
                local.as_ptr(),
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n >= 0 && n as usize == total {
            return Ok(());
        }
        let mut off = 0;
        for &(addr, len) in ranges {
            self.read(addr, &mut buf[off..off + len])?;
            off += len;
        }
        Ok(())
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_itself_and_reads_its_own_memory() {
        let p = Process::open(std::process::id()).unwrap();
        assert!(p.is_alive());
        assert!(!p.has_execed());
        let value: u64 = 0x1122_3344_5566_7788;
        assert_eq!(p.read_u64(&value as *const u64 as u64).unwrap(), value);
        assert!(p.read_u64(8).is_err(), "page 0 is never mapped");
    }

    /// A child that exited and was not reaped yet (a zombie) can still be signalled, but
    /// has nothing left to read or probe: it is not alive.
    #[test]
    fn an_exited_child_not_yet_reaped_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let p = Process::open(child.id()).unwrap();
        assert!(p.is_alive());
        let stat = format!("/proc/{}/stat", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z ")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!p.is_alive(), "a zombie is not alive");
        child.wait().unwrap();
    }

    #[test]
    fn a_pid_that_does_not_exist_is_named_in_the_error() {
        // PIDs above pid_max (at most 2^22) never exist.
        let err = Process::open(4_194_305).unwrap_err();
        assert!(
            matches!(err, ProcessError::NoSuchProcess(4_194_305)),
            "{err}"
        );
        assert!(err.to_string().contains("no process with PID 4194305"));
    }
}
