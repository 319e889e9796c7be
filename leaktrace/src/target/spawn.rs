//! Spawn mode (`leaktrace record -- CMD ARGS`): the command is forked and held just before
//! `execve` until the probes are attached to its binary, so that they see the Go program from
//! its first instruction and no early goroutine is missed.

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

/// A forked child waiting to exec the command.
#[derive(Debug)]
pub struct Held {
    pub pid: u32,
    pub program: PathBuf,
    release: OwnedFd,
}

/// Finds `cmd` as the shell would: as given when it contains a '/', else on PATH.
pub fn resolve(cmd: &Path) -> anyhow::Result<PathBuf> {
    if cmd.as_os_str().as_bytes().contains(&b'/') {
        return Ok(cmd.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{}: command not found on PATH", cmd.display()))
}

/// Forks; the child waits for [`Held::release`], then execs `argv`. If leaktrace dies before
/// releasing it, the child sees the pipe close and exits without running the command.
pub fn hold(argv: &[OsString]) -> anyhow::Result<Held> {
    let first = argv
        .first()
        .ok_or_else(|| anyhow!("no command given after --"))?;
    let program = resolve(Path::new(first))?;
    let c_program =
        CString::new(program.as_os_str().as_bytes()).context("command contains a NUL byte")?;
    let c_args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("argument contains a NUL byte")?;
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    c_argv.push(std::ptr::null());

    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors are fresh and owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only calls async-signal-safe functions (close, read, execv, _exit)
    // on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        unsafe {
            libc::close(write_end.as_raw_fd());
            let mut b = 0u8;
            loop {
                let n = libc::read(read_end.as_raw_fd(), (&raw mut b).cast(), 1);
                if n == 1 {
                    break;
                }
                if n == 0 || *libc::__errno_location() != libc::EINTR {
                    libc::_exit(126);
                }
            }
            libc::execv(c_program.as_ptr(), c_argv.as_ptr());
            libc::_exit(127);
        }
    }
    drop(read_end);
    Ok(Held {
        pid: pid as u32,
        program,
        release: write_end,
    })
}

impl Held {
    /// Lets the child exec the command, and waits until it runs the command's binary.
    pub fn release(self) -> anyhow::Result<()> {
        let b = [1u8];
        // SAFETY: writing one byte from a local buffer to our pipe.
        if unsafe { libc::write(self.release.as_raw_fd(), b.as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error()).context("releasing the spawned command");
        }
        use std::os::unix::fs::MetadataExt;
        let want = std::fs::metadata(&self.program)?.ino();
        let exe = format!("/proc/{}/exe", self.pid);
        for _ in 0..10_000 {
            match std::fs::metadata(&exe) {
                Ok(m) if m.ino() == want => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!(
                    "{} exited before it could run (exec failed?)",
                    self.program.display()
                ),
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        bail!("{} did not start within 10 s", self.program.display())
    }
}

/// Reaps a child that has exited; its exit code, or 128+signal.
pub fn reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on our own child, with a status we own.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if r != pid as i32 {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}
