//! `leaktrace top` in a real terminal: tmux (a private server, an 80x24 window) runs it
//! against the classic leak. The keys are typed with `send-keys` and the screen read with
//! `capture-pane`: the group is listed at its blocking site, the sort key re-sorts, Enter
//! opens its stack and Esc closes it, q stops the trace and the final report is printed on
//! the normal screen. After q, Ctrl-C, the target's exit and SIGTERM, the terminal is given
//! back: no alternate screen, and the tty in its normal mode (echo, canonical input).

mod support;

use std::{
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::*;

/// A tmux server of this test's own (`-L`), killed at the end.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts the server, with a session that keeps it up while the tests' come and go.
    fn new() -> Self {
        let t = Self {
            socket: format!("leaktrace-top-{}", std::process::id()),
        };
        t.run(&["new-session", "-d", "-s", "keep", "sleep 600"]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("running tmux (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A session running `command` through sh in an 80x24 window. When it ends, sh prints
    /// its exit status and the tty's modes, then stays (so that the pane can be read).
    fn start(&self, session: &str, command: &[String]) {
        let quoted: Vec<String> = command
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        let script = format!(
            "{}; echo \"[exit $?]\"; stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)' | tr '\\n' ' '; echo '[modes]'; exec sleep 600",
            quoted.join(" ")
        );
        self.run(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "80",
            "-y",
            "24",
            "sh",
            "-c",
            &script,
        ]);
    }

    fn show(&self, session: &str, format: &str) -> String {
        self.run(&["display", "-p", "-t", session, format])
            .trim()
            .to_string()
    }

    /// The visible screen.
    fn screen(&self, session: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", session])
    }

    /// Everything the pane has shown on its normal screen, wrapped lines joined.
    fn history(&self, session: &str) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", session])
    }

    fn keys(&self, session: &str, keys: &str) {
        self.run(&["send-keys", "-t", session, keys]);
    }

    /// Polls the screen until it contains `needle`; panics with the screen after a while.
    fn wait_for(&self, session: &str, needle: &str) -> String {
        self.wait(session, needle, |t| t.screen(session))
    }

    /// Polls the whole pane until it contains `needle`.
    fn wait_in_history(&self, session: &str, needle: &str) -> String {
        self.wait(session, needle, |t| t.history(session))
    }

    fn wait(&self, session: &str, needle: &str, read: impl Fn(&Self) -> String) -> String {
        let timeout = patience(Duration::from_secs(60));
        let end = Instant::now() + timeout;
        loop {
            let text = read(self);
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < end,
                "{session}: no {needle:?} within {timeout:?}; the pane shows:\n{text}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The PID of the process sh runs in the session (leaktrace).
    fn leaktrace_pid(&self, session: &str) -> u32 {
        let sh: u32 = self.show(session, "#{pane_pid}").parse().unwrap();
        let children = fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// After leaktrace exited: it exited 0, the pane is back on its normal screen, the tty
    /// in its normal modes, and the final report is there.
    fn assert_restored(&self, session: &str) -> String {
        let all = self.wait_in_history(session, "[modes]");
        assert!(all.contains("[exit 0]"), "{session}:\n{all}");
        assert_eq!(
            self.show(session, "#{alternate_on}"),
            "0",
            "{session}:\n{all}"
        );
        let modes = all.lines().find(|l| l.ends_with("[modes]")).unwrap();
        assert_eq!(
            modes, "icanon echo [modes]",
            "{session}: the tty stayed raw:\n{all}"
        );
        assert!(
            all.contains("suspected goroutine leak group(s)") && all.contains("main.produce(...)"),
            "{session}: no final report naming the producer:\n{all}"
        );
        all
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// `leaktrace top` with what the tests need: suspects after 1 s, snapshots often, every
/// probe placed.
fn top(extra: &[&str]) -> Vec<String> {
    let mut v = vec![leaktrace_bin().display().to_string(), "top".to_string()];
    v.extend(
        [
            "--min-age",
            "1s",
            "--snapshot-interval",
            "300ms",
            "--max-overhead",
            "off",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    v
}

/// q after sort, Enter and Esc: the group, its stack, then the report and -o's files.
fn keys_then_q(tmux: &Tmux, bin: &std::path::Path) {
    let s = "keys";
    let mut target = Fixture::start(bin, &["-requests", "5", "-hold"]);
    target.stderr.wait_for("holding", Duration::from_secs(30));
    let dir = std::env::temp_dir().join(format!("leaktrace-top-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let pid = target.pid().to_string();
    tmux.start(s, &top(&["-p", &pid, "-o", dir.to_str().unwrap()]));
    assert_eq!(tmux.show(s, "#{pane_width}x#{pane_height}"), "80x24");
    let screen = tmux.wait_for(s, "main.produce");
    assert!(
        screen.contains("leaktrace top | PID ")
            && screen.contains("[chan send] main.produce main.go:"),
        "{screen}"
    );
    assert!(screen.contains("by main.handle"), "{screen}");
    assert!(
        screen.contains(" memory") && screen.contains("RSS"),
        "{screen}"
    );
    assert!(
        screen.contains(" snapshots | cost ") && screen.contains("no budget | probes park,wake"),
        "{screen}"
    );
    assert!(
        screen.contains("COUNT▼"),
        "sorted by goroutines first:\n{screen}"
    );
    assert_eq!(tmux.show(s, "#{alternate_on}"), "1");
    tmux.keys(s, "p");
    tmux.wait_for(s, "| PAUSED");
    tmux.keys(s, "p");
    tmux.keys(s, "s");
    let sorted = tmux.wait_for(s, "GROW▼");
    assert!(!sorted.contains("PAUSED"), "{sorted}");
    tmux.keys(s, "Enter");
    let stack = tmux.wait_for(s, "main.produce(...)");
    assert!(stack.contains("created by main.handle"), "{stack}");
    tmux.keys(s, "Escape");
    tmux.wait_for(s, "WAITS AT / CREATED BY");
    tmux.keys(s, "q");
    let all = tmux.assert_restored(s);
    assert!(all.contains("SIGINT received"), "{all}");
    let report = fs::read_to_string(dir.join("report.json")).expect("top -o writes report.json");
    assert!(report.contains("main.produce"), "{report}");
    let _ = fs::remove_dir_all(&dir);
}

/// Ctrl-C, which raw mode makes a key: it stops the trace as SIGINT does.
fn ctrl_c(tmux: &Tmux, bin: &std::path::Path) {
    let s = "ctrl-c";
    let mut target = Fixture::start(bin, &["-requests", "5", "-hold"]);
    target.stderr.wait_for("holding", Duration::from_secs(30));
    tmux.start(s, &top(&["-p", &target.pid().to_string()]));
    tmux.wait_for(s, "main.produce");
    tmux.keys(s, "C-c");
    let all = tmux.assert_restored(s);
    assert!(all.contains("SIGINT received"), "{all}");
}

/// The target exits while the screen is up: the report follows on the normal screen.
fn target_exits(tmux: &Tmux, bin: &std::path::Path) {
    let s = "exits";
    let mut target = Fixture::start(bin, &["-requests", "5", "-hold"]);
    target.stderr.wait_for("holding", Duration::from_secs(30));
    let pid = target.pid();
    tmux.start(s, &top(&["-p", &pid.to_string()]));
    tmux.wait_for(s, "main.produce");
    // Closing its stdin ends the fixture's hold.
    let (_, code) = target.finish();
    assert_eq!(code, Some(1), "the classic leak fails its requests");
    let all = tmux.assert_restored(s);
    assert!(all.contains(&format!("PID {pid} exited")), "{all}");
}

/// SIGTERM to leaktrace, spawn mode: the report, and the command's own output kept off the
/// screen and printed after it.
fn sigterm_spawned(tmux: &Tmux, bin: &std::path::Path) {
    let s = "sigterm";
    let mut cmd = top(&["--"]);
    cmd.extend([bin.to_str().unwrap(), "-requests", "5", "-linger", "10m"].map(String::from));
    tmux.start(s, &cmd);
    let screen = tmux.wait_for(s, "main.produce");
    assert!(
        !screen.contains("requests, 5 failed"),
        "the command's output was drawn over the screen:\n{screen}"
    );
    let leaktrace = tmux.leaktrace_pid(s);
    let spawned =
        fs::read_to_string(format!("/proc/{leaktrace}/task/{leaktrace}/children")).unwrap();
    // SAFETY: signalling the leaktrace this test started.
    unsafe { libc::kill(leaktrace as i32, libc::SIGTERM) };
    let all = tmux.assert_restored(s);
    assert!(all.contains("SIGTERM received"), "{all}");
    assert!(
        all.contains("5 requests, 5 failed"),
        "the command's output is lost:\n{all}"
    );
    for child in spawned.split_whitespace() {
        // SAFETY: ending the command this test had leaktrace spawn.
        unsafe { libc::kill(child.parse().unwrap(), libc::SIGKILL) };
    }
}

#[test]
fn top_in_a_terminal() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let tmux = Tmux::new();
    let started = Instant::now();
    thread::scope(|sc| {
        sc.spawn(|| keys_then_q(&tmux, &bin));
        sc.spawn(|| target_exits(&tmux, &bin));
        sc.spawn(|| sigterm_spawned(&tmux, &bin));
        sc.spawn(|| ctrl_c(&tmux, &bin));
    });
    println!("four sessions in {:.1} s", started.elapsed().as_secs_f64());
}

/// Without a terminal on stdout, top says so and prints the plain live lines.
#[test]
fn top_without_a_terminal_prints_the_live_lines() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut target = Fixture::start(&bin, &["-requests", "5", "-hold"]);
    target.stderr.wait_for("holding", Duration::from_secs(30));
    let pid = target.pid().to_string();
    let mut tracer = Tracer::start(&["top", "-p", &pid, "-d", "3s", "--min-age", "1s"]);
    tracer.stderr.wait_for(
        "stdout is not a terminal: printing the live lines",
        Duration::from_secs(30),
    );
    let (out, _, code) = tracer.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("| suspects ") && out.contains("main.produce(...)"),
        "no live lines and report:\n{out}"
    );
    assert!(!out.contains("\x1b["), "escape sequences on a pipe:\n{out}");
}
