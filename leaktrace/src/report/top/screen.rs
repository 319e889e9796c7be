//! The terminal while `top` runs: the alternate screen in raw mode, drawn by a thread of its
//! own that also reads the keys, so that a key is answered at once whatever the trace is
//! doing. The trace hands it each interval ([`Screen::show`]) and takes the terminal back
//! before the report ([`Screen::close`]); the terminal is restored on every way out: q and
//! Ctrl-C (which stop the trace as SIGINT does: the screen raises it on leaktrace itself),
//! SIGINT, SIGTERM, the target's exit, an error (the `Drop`) and a panic (a panic hook that
//! restores it first).
//!
//! While the screen is up, leaktrace's stderr (and a spawned command's output) would write
//! over it: file descriptor 2 is held in a pipe, its text kept and printed when the screen
//! closes, then passed through.

use std::{
    collections::VecDeque,
    io::{self, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};

use super::{Choice, Interval, Sort, draw, sorted};

/// How long the drawing thread waits for a key before it looks for a new interval.
const KEY_POLL: Duration = Duration::from_millis(50);

/// The most of the held stderr kept for when the screen closes; older text is dropped
/// (and said so).
const HELD_BYTES: usize = 256 << 10;

/// The screen is up: raw mode and the alternate screen are to be undone.
static UP: AtomicBool = AtomicBool::new(false);

/// Leaves the alternate screen and raw mode, once, from whichever way out comes first.
fn restore_terminal() {
    if UP.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

/// The screen failed (a panic, or the terminal could not be drawn on or read).
static FAILED: AtomicBool = AtomicBool::new(false);

/// The screen cannot go on: the trace is stopped, its report printed, and leaktrace then
/// exits with an error.
fn fail() {
    FAILED.store(true, Ordering::SeqCst);
    interrupt();
}

/// Stops the trace as Ctrl-C does in the plain trace: whatever phase it is in (attaching,
/// following) already stops on SIGINT.
fn interrupt() {
    // SAFETY: sending a signal to our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
}

/// The full-screen view, up from [`Screen::open`] to [`Screen::close`].
pub struct Screen {
    intervals: Option<mpsc::Sender<Interval>>,
    drawer: Option<thread::JoinHandle<()>>,
}

impl Screen {
    /// Holds stderr, enters the alternate screen in raw mode and starts drawing ("attaching"
    /// until the first interval comes).
    pub fn open() -> anyhow::Result<Self> {
        hold_stderr().context("holding stderr while the screen is up")?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            release_stderr();
            previous(info);
        }));
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        UP.store(true, Ordering::SeqCst);
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide) {
            restore_terminal();
            release_stderr();
            bail!("entering the terminal's alternate screen: {e}");
        }
        let (tx, rx) = mpsc::channel();
        let drawer = thread::Builder::new()
            .name("top".into())
            .spawn(move || {
                // A panic has restored the terminal (the hook); stop the trace, whose report
                // then comes as after Ctrl-C.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(rx))).is_err() {
                    fail();
                }
            })
            .context("starting the screen's thread")?;
        Ok(Self {
            intervals: Some(tx),
            drawer: Some(drawer),
        })
    }

    /// Draws this interval (unless paused: then it waits for the next one after the pause).
    pub fn show(&mut self, now: Interval) {
        if let Some(tx) = &self.intervals {
            let _ = tx.send(now);
        }
    }

    /// The screen failed while up (said on stderr when it was a panic): the trace was
    /// stopped as by Ctrl-C.
    pub fn failed(&self) -> bool {
        FAILED.load(Ordering::SeqCst)
    }

    /// Gives the terminal back: the normal screen in its normal mode, with what was written
    /// to stderr meanwhile printed on it.
    pub fn close(&mut self) {
        drop(self.intervals.take());
        if let Some(d) = self.drawer.take() {
            let _ = d.join();
        }
        restore_terminal();
        release_stderr();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.close();
    }
}

/// The drawing thread: draws each interval as it comes and answers the keys, until the
/// trace closes the screen.
fn run(intervals: mpsc::Receiver<Interval>) {
    let Ok(mut term) = Terminal::new(CrosstermBackend::new(io::stdout())) else {
        fail();
        return;
    };
    let mut now = Interval::default();
    let mut choice = Choice::default();
    let mut dirty = true;
    loop {
        loop {
            match intervals.try_recv() {
                Ok(i) if !choice.paused => {
                    now = i;
                    dirty = true;
                }
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if dirty {
            let shown = now.leaks.len();
            choice.selected = choice.selected.min(shown.saturating_sub(1));
            if term.draw(|f| draw(f, &now, &choice)).is_err() {
                fail();
                return;
            }
            dirty = false;
        }
        match event::poll(KEY_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => {
                fail();
                return;
            }
        }
        match event::read() {
            Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                dirty = true;
                let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers == KeyModifiers::CONTROL;
                if ctrl_c || k.code == KeyCode::Char('q') {
                    if !choice.stopping {
                        choice.stopping = true;
                        interrupt();
                    }
                    continue;
                }
                press(&mut choice, k.code, &now);
            }
            Ok(Event::Resize(..)) => dirty = true,
            Ok(_) => {}
            Err(_) => {
                fail();
                return;
            }
        }
    }
}

/// What a key does to the view.
fn press(c: &mut Choice, key: KeyCode, now: &Interval) {
    let groups = now.leaks.len();
    match (key, c.stack) {
        (KeyCode::Esc | KeyCode::Backspace, Some(_)) => c.stack = None,
        (KeyCode::Up, Some(s)) => c.stack = Some(s.saturating_sub(1)),
        (KeyCode::Down, Some(s)) => c.stack = Some(s.saturating_add(1)),
        (KeyCode::Enter, None) if groups > 0 => c.stack = Some(0),
        (KeyCode::Up, None) => c.selected = c.selected.saturating_sub(1),
        (KeyCode::Down, None) => c.selected = (c.selected + 1).min(groups.saturating_sub(1)),
        (KeyCode::Char('p'), _) => c.paused = !c.paused,
        (KeyCode::Char(k @ ('s' | 'g' | 'r' | 'm')), None) => {
            // Keep the selected group selected in its new place.
            let key = sorted(&now.leaks, c.sort).get(c.selected).map(|l| l.key());
            c.sort = match k {
                'g' => Sort::Goroutines,
                'r' => Sort::Growth,
                'm' => Sort::Pinned,
                _ => c.sort.next(),
            };
            c.selected = key
                .and_then(|key| {
                    sorted(&now.leaks, c.sort)
                        .iter()
                        .position(|l| l.key() == key)
                })
                .unwrap_or(0);
        }
        _ => {}
    }
}

/// Stderr held while the screen is up: the descriptor it was, the pipe's read end, and the
/// text read so far (or none once released: passed through from then on).
struct Held {
    saved: OwnedFd,
    pipe: OwnedFd,
    text: Option<VecDeque<u8>>,
    dropped: usize,
}

static HELD: Mutex<Option<Held>> = Mutex::new(None);

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_all(fd: RawFd, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writing from a live slice to a descriptor we hold.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}

impl Held {
    /// Reads what the pipe has now: kept while held, passed to the real stderr after.
    /// Returns false at the end of the pipe (every writer gone).
    fn drain(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a local buffer from our pipe (non-blocking).
            let n =
                unsafe { libc::read(self.pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => return false,
                n if n > 0 => {
                    let got = &buf[..n as usize];
                    match &mut self.text {
                        Some(t) => {
                            t.extend(got);
                            let over = t.len().saturating_sub(HELD_BYTES);
                            t.drain(..over);
                            self.dropped += over;
                        }
                        None => write_all(self.saved.as_raw_fd(), got),
                    }
                }
                _ => {
                    return matches!(
                        io::Error::last_os_error().kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    );
                }
            }
        }
    }
}

/// Points file descriptor 2 at a pipe, read by a thread until every writer is gone (a
/// spawned command may keep writing after the screen closes).
fn hold_stderr() -> io::Result<()> {
    let (read, write) = pipe()?;
    // SAFETY: duplicating our own stderr descriptor.
    let saved = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if saved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh and owned here.
    let saved = unsafe { OwnedFd::from_raw_fd(saved) };
    let _ = io::stderr().flush();
    // SAFETY: pointing fd 2 at the pipe's write end; dup2 clears close-on-exec on fd 2, so
    // that a command spawned meanwhile writes there too.
    if unsafe { libc::dup2(write.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(write);
    let reader = read.as_raw_fd();
    *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some(Held {
        saved,
        pipe: read,
        text: Some(VecDeque::new()),
        dropped: 0,
    });
    thread::Builder::new()
        .name("stderr".into())
        .spawn(move || {
            loop {
                let mut p = libc::pollfd {
                    fd: reader,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: polling one descriptor of a local pollfd. The read end stays open
                // (in HELD) for the life of the process.
                unsafe { libc::poll(&mut p, 1, -1) };
                let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
                let Some(h) = held.as_mut() else { return };
                if !h.drain() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Points fd 2 back at the real stderr and prints what was held; what a spawned command
/// writes later passes through.
fn release_stderr() {
    // A panic while the lock is held (in the reader) must still give stderr back.
    let mut held = match HELD.try_lock() {
        Ok(h) => h,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            thread::sleep(Duration::from_millis(10));
            match HELD.try_lock() {
                Ok(h) => h,
                Err(_) => return,
            }
        }
    };
    let Some(h) = held.as_mut() else { return };
    if h.text.is_none() {
        return;
    }
    // SAFETY: pointing fd 2 back at the descriptor it was.
    unsafe { libc::dup2(h.saved.as_raw_fd(), libc::STDERR_FILENO) };
    h.drain();
    let text = h.text.take().unwrap_or_default();
    if h.dropped > 0 {
        let note = format!(
            "leaktrace: ({} bytes written to stderr while the screen was up are left out)\n",
            h.dropped
        );
        write_all(h.saved.as_raw_fd(), note.as_bytes());
    }
    let (a, b) = text.as_slices();
    write_all(h.saved.as_raw_fd(), a);
    write_all(h.saved.as_raw_fd(), b);
}
