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
    /// Closed by a successful exec (close-on-exec); the child writes its errno there when
    /// exec fails.
    exec_status: OwnedFd,
}

/// A pipe whose two ends close on exec.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors are fresh and owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
/// `stdout_to_stderr`: the command writes its stdout to leaktrace's stderr, when leaktrace's
/// stdout carries data a script reads (`--events -`) or `top`'s screen.
pub fn hold(argv: &[OsString], stdout_to_stderr: bool) -> anyhow::Result<Held> {
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

    let (read_end, write_end) = pipe()?;
    let (status_read, status_write) = pipe()?;
    // SAFETY: the child only calls async-signal-safe functions (close, read, dup2, execv,
    // write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        unsafe {
            libc::close(write_end.as_raw_fd());
            libc::close(status_read.as_raw_fd());
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
            if stdout_to_stderr {
                libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
            }
            libc::execv(c_program.as_ptr(), c_argv.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(
                status_write.as_raw_fd(),
                (&raw const errno).cast(),
                size_of::<i32>(),
            );
            libc::_exit(127);
        }
    }
    drop(read_end);
    drop(status_write);
    Ok(Held {
        pid: pid as u32,
        program,
        release: write_end,
        exec_status: status_read,
    })
}

impl Held {
    /// Lets the child exec the command, and waits until it runs the command's binary: the
    /// status pipe closes on a successful exec, however soon the command then exits.
    pub fn release(self) -> anyhow::Result<()> {
        let b = [1u8];
        // SAFETY: writing one byte from a local buffer to our pipe.
        if unsafe { libc::write(self.release.as_raw_fd(), b.as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error()).context("releasing the spawned command");
        }
        let mut errno = [0u8; size_of::<i32>()];
        let mut got = 0;
        while got < errno.len() {
            // SAFETY: reading into the unfilled rest of a local buffer from our pipe.
            let n = unsafe {
                libc::read(
                    self.exec_status.as_raw_fd(),
                    errno[got..].as_mut_ptr().cast(),
                    errno.len() - got,
                )
            };
            match n {
                0 => break,
                n if n > 0 => got += n as usize,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    return Err(io::Error::last_os_error())
                        .context("waiting for the spawned command to start");
                }
            }
        }
        match got {
            0 => Ok(()),
            4 => bail!(
                "cannot run {}: {}",
                self.program.display(),
                io::Error::from_raw_os_error(i32::from_ne_bytes(errno))
            ),
            _ => bail!("{} exited before it could run", self.program.display()),
        }
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
