//! `cargo xtask bench`: what leaktrace costs a busy Go service, measured side by side in one
//! run. A fan-out HTTP service (testdata/go/fanout) is put under closed-loop load by wrk on
//! 127.0.0.1, alternately untraced and traced by `leaktrace record` with default settings;
//! each traced run must also find the service's leak. Prints throughput and p99 ratios
//! (traced/untraced) with their spread, leaktrace's own CPU time and peak RSS, and writes
//! BENCHMARKS.md. Figures, not pass/fail: these machines are noisy.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use crate::go;

/// The goals the overhead issue sets for default settings.
const GOAL_THROUGHPUT: f64 = 0.98;
const GOAL_P99: f64 = 1.05;

struct Run {
    rps: f64,
    p99_ms: f64,
}

struct Traced {
    run: Run,
    leak_found: bool,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    shed: Vec<String>,
    hits: String,
}

fn start_service(bin: &std::path::Path) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(bin)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the fan-out service")?;
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .ok_or_else(|| anyhow!("no address in {line:?}"))?
        .to_string();
    Ok((child, addr))
}

/// Runs wrk against `addr` for `seconds`; requests/s and the p99 latency in ms.
fn wrk(addr: &str, seconds: u64) -> anyhow::Result<Run> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c32",
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{addr}/search?q=bench"),
        ])
        .output()
        .context("running wrk (scripts/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("no 99% latency in wrk's output:\n{text}"))?;
    Ok(Run {
        rps,
        p99_ms: parse_latency(&p99)?,
    })
}

/// wrk prints latencies as `812.00us`, `1.52ms` or `2.01s`.
fn parse_latency(s: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e3)
    } else {
        bail!("latency {s:?}")
    };
    Ok(num.parse::<f64>()? * scale)
}

fn proc_cpu_and_rss(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.split_whitespace().collect::<Vec<_>>();
            Some((rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0);
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}

/// leaktrace attaches to the service half a second into the load, as it would to a busy
/// service in production; the measured window includes its start-up.
fn traced_run(
    leaktrace: &std::path::Path,
    service: &std::path::Path,
    seconds: u64,
    rep: usize,
) -> anyhow::Result<Traced> {
    let (mut svc, addr) = start_service(service)?;
    wrk(&addr, 1)?; // warm-up
    let dir = std::env::temp_dir().join(format!("leaktrace-bench-{}-{rep}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let load = {
        let addr = addr.clone();
        std::thread::spawn(move || wrk(&addr, seconds))
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut lt = Command::new(leaktrace)
        .args([
            "record",
            "-p",
            &svc.id().to_string(),
            "-d",
            "1h",
            "--min-age",
            "2s",
            "-o",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let run = load.join().map_err(|_| anyhow!("wrk thread panicked"))??;
    let (cpu_seconds, peak_rss_kib) = proc_cpu_and_rss(lt.id());
    // SAFETY: signalling our own child.
    unsafe { libc_kill(lt.id() as i32, 2) };
    let status = lt.wait()?;
    let _ = svc.kill();
    let _ = svc.wait();
    if !status.success() {
        bail!("leaktrace failed: {status}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("report.json"))?)?;
    let leak_found = report["leaks"]
        .as_array()
        .is_some_and(|l| l.iter().any(|g| g["site"]["function"] == "main.backend"));
    let shed = report["probes"]["shed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(Traced {
        run,
        leak_found,
        cpu_seconds,
        peak_rss_kib,
        shed,
        hits: report["probes"]["hits"].to_string(),
    })
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn untraced_run(service: &std::path::Path, seconds: u64) -> anyhow::Result<Run> {
    let (mut svc, addr) = start_service(service)?;
    wrk(&addr, 1)?;
    let run = wrk(&addr, seconds)?;
    let _ = svc.kill();
    let _ = svc.wait();
    Ok(run)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!("{cores} vCPU ({cpu}), {mem} GiB, Linux {}", kernel.trim())
}

pub fn bench(seconds: u64, reps: usize) -> anyhow::Result<()> {
    let root = go::repo_root();
    println!("==> building leaktrace (release) and testdata/go/fanout");
    let leaktrace = go::build_leaktrace_release()?;
    let (service, version) = go::build_newest("testdata/go/fanout", "bench")?;

    let (mut untraced, mut traced) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Alternate which goes first, so that drift of the machine hits both alike.
        if rep % 2 == 0 {
            untraced.push(untraced_run(&service, seconds)?);
            traced.push(traced_run(&leaktrace, &service, seconds, rep)?);
        } else {
            traced.push(traced_run(&leaktrace, &service, seconds, rep)?);
            untraced.push(untraced_run(&service, seconds)?);
        }
        let (u, t) = (untraced.last().unwrap(), &traced.last().unwrap().run);
        println!(
            "rep {rep}: untraced {:.0} req/s p99 {:.2} ms | traced {:.0} req/s p99 {:.2} ms | ratio {:.3}",
            u.rps,
            u.p99_ms,
            t.rps,
            t.p99_ms,
            t.rps / u.rps
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut ratios: Vec<f64> = untraced
        .iter()
        .zip(&traced)
        .map(|(u, t)| t.run.rps / u.rps)
        .collect();
    let mut p99s: Vec<f64> = untraced
        .iter()
        .zip(&traced)
        .map(|(u, t)| t.run.p99_ms / u.p99_ms)
        .collect();
    let (rmin, rmax) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let (pmin, pmax) = (
        p99s.iter().copied().fold(f64::MAX, f64::min),
        p99s.iter().copied().fold(0.0, f64::max),
    );
    let (r, p) = (median(&mut ratios), median(&mut p99s));
    let found = traced.iter().filter(|t| t.leak_found).count();
    let cpu = traced.iter().map(|t| t.cpu_seconds).fold(0.0, f64::max);
    let rss = traced.iter().map(|t| t.peak_rss_kib).max().unwrap_or(0);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nWritten by `cargo xtask bench` (`./x bench`); figures from one run, traced and untraced side by side, alternating.\n"
    );
    let _ = writeln!(
        md,
        "Machine: {}. Go {version}. Load: `wrk -t1 -c32` on 127.0.0.1, {seconds} s per run, {reps} runs each.\n",
        machine()
    );
    let _ = writeln!(
        md,
        "## Fan-out HTTP service (testdata/go/fanout), leaktrace with default settings\n"
    );
    let _ = writeln!(
        md,
        "| run | untraced req/s | traced req/s | ratio | untraced p99 ms | traced p99 ms | leak found |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (i, (u, t)) in untraced.iter().zip(&traced).enumerate() {
        let _ = writeln!(
            md,
            "| {i} | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} | {} |",
            u.rps,
            t.run.rps,
            t.run.rps / u.rps,
            u.p99_ms,
            t.run.p99_ms,
            if t.leak_found { "yes" } else { "no" }
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "- Throughput ratio (traced/untraced): median {r:.3} (spread {rmin:.3}-{rmax:.3}); goal >= {GOAL_THROUGHPUT}: {}",
        if r >= GOAL_THROUGHPUT {
            "holds"
        } else {
            "does not hold"
        }
    );
    let _ = writeln!(
        md,
        "- p99 latency ratio: median {p:.3} (spread {pmin:.3}-{pmax:.3}); goal <= {GOAL_P99}: {}",
        if p <= GOAL_P99 {
            "holds"
        } else {
            "does not hold"
        }
    );
    let _ = writeln!(
        md,
        "- The leak group (main.backend, chan send) was found in {found} of {} traced runs.",
        traced.len()
    );
    let _ = writeln!(
        md,
        "- leaktrace itself: at most {cpu:.2} s of CPU per {seconds} s run, peak RSS {:.1} MiB.",
        rss as f64 / 1024.0
    );
    if let Some(t) = traced.first() {
        let _ = writeln!(md, "- Probe hits over the first traced run: {}.", t.hits);
        for s in &t.shed {
            let _ = writeln!(md, "- Budget: {s}.");
        }
    }
    print!("\n{md}");
    fs::write(root.join("BENCHMARKS.md"), md)?;
    println!("\n==> wrote BENCHMARKS.md");
    Ok(())
}
