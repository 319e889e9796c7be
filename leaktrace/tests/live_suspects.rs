//! The plain live output names a leak group the moment it becomes a suspect, and again when
//! it has doubled, while the trace runs: against an HTTP service that leaks one goroutine
//! per failed request, driven by the test.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use support::*;

fn fail(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET /work?fail=1 HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 400"), "{resp}");
}

/// The goroutine count a suspect line gives (the last number before "goroutine").
fn count(line: &str) -> usize {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.starts_with("goroutine"))
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    words[at - 1].parse().unwrap()
}

#[test]
fn a_suspect_is_named_live_and_again_when_it_doubles() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("httpleak", &version, &[]);
    let mut service = Fixture::start(&bin, &[]);
    let line = service
        .stderr
        .wait_for("listening on", Duration::from_secs(90));
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let mut tracer = Command::new(leaktrace_bin())
        .args(["-p", &service.pid().to_string(), "-d", "60s"])
        .args(["--min-age", "1s", "--snapshot-interval", "300ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Lines::new(tracer.stderr.take().unwrap());
    let mut stdout = Lines::new(tracer.stdout.take().unwrap());
    stderr.wait_for("attached to PID", Duration::from_secs(90));

    for _ in 0..3 {
        fail(&addr);
    }
    let named = stdout.wait_for("suspect: ", Duration::from_secs(90));
    assert!(
        named.contains("[chan send] at main.lookup (main.go:") && named.contains(", confidence "),
        "{named}"
    );
    let first = count(&named);
    assert!((1..=3).contains(&first), "{named}");
    // Leak more than as many again: the group is named again, at twice its size or more.
    for _ in 0..2 * first + 3 {
        fail(&addr);
    }
    let grew = stdout.wait_for("suspect grew", Duration::from_secs(90));
    assert!(
        grew.contains(&format!("grew {first} -> ")) && grew.contains("[chan send] at main.lookup"),
        "{grew}"
    );
    assert!(count(&grew) >= 2 * first, "{grew}");
    println!("{named}\n{grew}");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    assert!(tracer.wait().unwrap().success(), "{:?}", stderr.rest());
    let rest = stdout.rest();
    // A group named once per doubling: never again at less than twice its last size.
    let mut last = 0;
    for l in rest.iter().filter(|l| l.contains("] suspect")) {
        assert!(
            count(l) >= 2 * last,
            "named again before doubling: {rest:#?}"
        );
        last = count(l);
    }
}
