//! `cargo xtask demo`: builds leaktrace and the bundled leaky service, puts load on the
//! service on 127.0.0.1, and traces it with `leaktrace record -p` while the load runs: the
//! live output, then the report, and report.html (with plots) in target/demo-report.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use crate::go;

fn step(s: &str) {
    println!("\n==> {s}");
}

/// One request on a fresh connection; true when the service answered 200.
fn get(addr: &str, path: &str) -> anyhow::Result<bool> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"))
}

pub fn demo(seconds: u64) -> anyhow::Result<()> {
    step("building leaktrace and demo/leakyservice");
    let leaktrace = go::build_leaktrace_release()?;
    let (service_bin, version) = go::build_newest("demo/leakyservice", "demo")?;
    println!("(the service is built with Go {version})");

    step("starting the service on 127.0.0.1");
    let mut service = Command::new(&service_bin)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting leakyservice")?;
    let mut first = String::new();
    BufReader::new(service.stdout.take().unwrap()).read_line(&mut first)?;
    println!("{}", first.trim());
    let addr = first
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow!("unexpected first line from the service: {first:?}"))?
        .to_string();
    let pid = service.id();

    step(&format!(
        "driving load at http://{addr}/search (one query in four fails, and each failure leaks goroutines)"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), addr.clone());
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match get(&addr, &format!("/search?q=item{i}")) {
                    Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    thread::sleep(Duration::from_secs(1));

    // A goroutine blocked this long with no sign of life is a suspect; the default (30 s)
    // suits production, the demo wants an answer within its run.
    let min_age = format!("{}s", (seconds / 2).max(1));
    let out_dir = go::repo_root().join("target/demo-report");
    step(&format!(
        "sudo leaktrace record -p {pid} -d {seconds}s --min-age {min_age} -o {}",
        out_dir.display()
    ));
    let status = Command::new(&leaktrace)
        .arg("record")
        .arg("-o")
        .arg(&out_dir)
        .args([
            "-p",
            &pid.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--min-age",
            &min_age,
        ])
        .status()
        .context("running leaktrace")?;
    stop.store(true, Ordering::Relaxed);
    load.join().map_err(|_| anyhow!("load thread panicked"))?;
    let _ = service.kill();
    let _ = service.wait();
    println!(
        "\nload: {} requests answered, {} failed (each failure leaked up to 2 goroutines)",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    if !status.success() {
        bail!("leaktrace failed: {status}");
    }
    println!(
        "\nthe report with plots: {} (open it in a browser; it loads nothing from the network)",
        out_dir.join("report.html").display()
    );
    Ok(())
}
