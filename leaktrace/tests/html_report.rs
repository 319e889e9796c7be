//! `report.html` as a browser shows it: headless Chromium (Debian's `chromium`, installed by
//! scripts/setup.sh) opens the page `leaktrace record` wrote for a real leaking program,
//! takes a screenshot, and the page it built is checked against report.json: every plot has
//! points and they are the report's figures. The page loads nothing: Chromium resolves no
//! host, the page names no http(s) URL, and nothing is logged to its console.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use support::*;

/// Runs headless Chromium on `page` with `args` (`--dump-dom`, `--screenshot=FILE`) in a
/// fresh profile, with every host name mapped to nowhere; returns its stdout and the
/// console messages it logged.
fn chromium(page: &Path, args: &[&str], profile: &Path) -> (String, Vec<String>) {
    let _ = std::fs::remove_dir_all(profile);
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium: is Debian's chromium installed (scripts/setup.sh)?");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium {args:?} failed:\n{stderr}");
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The value of attribute `name` in the start tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Undoes the escapes a serialized DOM uses in attribute values.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Every plotted point in `dom`: plot -> series -> [(x, y)].
type Points = BTreeMap<String, BTreeMap<String, Vec<(f64, f64)>>>;

fn points(dom: &str) -> Points {
    let mut out = Points::new();
    for tag in dom.split("<circle ").skip(1) {
        let tag = format!(" {}", &tag[..tag.find('>').unwrap()]);
        if attr(&tag, "class") != Some("pt") {
            continue;
        }
        let num = |n: &str| -> f64 { attr(&tag, n).unwrap().parse().unwrap() };
        out.entry(unescape(attr(&tag, "data-plot").unwrap()))
            .or_default()
            .entry(unescape(attr(&tag, "data-series").unwrap()))
            .or_default()
            .push((num("data-x"), num("data-y")));
    }
    out
}

/// `s` as a serialized DOM writes text.
fn as_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Asserts that `got` are the points `want`, to the last digits (serde_json reads floats
/// to within an ulp, Rust exactly).
fn assert_points(got: &[(f64, f64)], want: &[(f64, f64)], what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0);
    assert!(
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| close(g.0, w.0) && close(g.1, w.1)),
        "{what}: plotted {got:?}\nreport.json {want:?}"
    );
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `leaktrace record -o DIR` on the classic leak writes report.html; Chromium shows it
/// without a console message or a network request, and its plots are report.json's figures.
#[test]
fn report_html_shows_the_report_in_chromium() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let dir: PathBuf = std::env::temp_dir().join(format!("leaktrace-html-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(leaktrace_bin())
        .args(["record", "-o"])
        .arg(&dir)
        .args(["--min-age", "1s", "--snapshot-interval", "300ms", "--"])
        .arg(&bin)
        .args(["-linger", "3s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("report.html"), "{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for url in ["http://", "https://", "//cdn", "src="] {
        assert!(!html.contains(url), "report.html names {url:?}");
    }

    let profile = dir.join("chromium-profile");
    let shot = dir.join("report.png");
    let (_, console) = chromium(
        &page,
        &[
            "--window-size=1000,2400",
            &format!("--screenshot={}", shot.display()),
        ],
        &profile,
    );
    assert!(console.is_empty(), "console messages: {console:#?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes of screenshot",
        png.len()
    );
    let (dom, console) = chromium(&page, &["--dump-dom"], &profile);
    assert!(console.is_empty(), "console messages: {console:#?}");

    // The verdict, in one sentence at the top.
    let verdict = report["memory_verdict"]["explanation"].as_str().unwrap();
    let top = &dom[..dom.find("<h2>").unwrap()];
    assert!(
        top.contains(&as_text(verdict)),
        "{verdict:?} not at the top:\n{top}"
    );
    // Every plot has points, and they are report.json's figures.
    let pts = points(&dom);
    let figures = dom.matches("<figure ").count();
    assert_eq!(
        pts.len(),
        figures,
        "a figure without points: {:?}",
        pts.keys()
    );
    for plot in ["memory", "madvise", "growth", "park", "alloc_size"] {
        assert!(pts.contains_key(plot), "no {plot} plot: {:?}", pts.keys());
    }
    let timeline = report["memory_timeline"].as_array().unwrap();
    assert!(timeline.len() >= 3, "{timeline:?}");
    for (series, field) in [
        ("RSS", "rss_bytes"),
        ("heap in use", "HeapInuse"),
        ("heap released", "HeapReleased"),
    ] {
        let want: Vec<(f64, f64)> = timeline
            .iter()
            .map(|p| (f(&p["seconds"]), f(&p[field])))
            .collect();
        assert_points(&pts["memory"][series], &want, series);
    }
    let last = &timeline.last().unwrap()["madvise_bytes"];
    for advice in last.as_object().unwrap().keys() {
        let want: Vec<(f64, f64)> = timeline
            .iter()
            .map(|p| (f(&p["seconds"]), f(&p["madvise_bytes"][advice])))
            .collect();
        assert_points(&pts["madvise"][&format!("madvise {advice}")], &want, advice);
    }
    let leak = &report["leaks"][0];
    assert_eq!(leak["site"]["function"], "main.produce", "{leak:#}");
    let growth: Vec<(f64, f64)> = leak["growth"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (f(&p[0]), f(&p[1])))
        .collect();
    assert_points(
        &pts["growth"]["#1 [chan send] main.produce"],
        &growth,
        "growth",
    );
    assert_eq!(growth.last().unwrap().1, f(&leak["count"]));
    let percentiles = |tag: &str| -> Vec<(f64, f64)> {
        let h = &report["histograms"][tag];
        ["min", "p50", "p90", "p99", "p999", "max"]
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, f(&h[p])))
            .collect()
    };
    assert_points(
        &pts["park"]["chan send"],
        &percentiles("park_ns.chan_send"),
        "park",
    );
    assert_points(
        &pts["alloc_size"]["alloc_size_bytes"],
        &percentiles("alloc_size_bytes"),
        "alloc_size",
    );
    // The leak group with its stack and evidence.
    let group = &dom[dom.find("id=\"group-1\"").expect("group #1")..];
    let line = line_of_in("classicleak", "ch <- make([]byte");
    assert!(
        group.contains(&format!("classicleak/main.go:{line}")),
        "{group}"
    );
    for e in leak["evidence"].as_array().unwrap() {
        assert!(
            group.contains(&as_text(e.as_str().unwrap())),
            "{e} not shown"
        );
    }

    // The console check sees what this page's policy blocks: the same page asking for an
    // image from the network logs a message.
    let control = dir.join("control.html");
    std::fs::write(
        &control,
        html.replacen("<body>", "<body><img src=\"https://example.com/x.png\">", 1),
    )
    .unwrap();
    let (_, console) = chromium(&control, &["--dump-dom"], &profile);
    assert!(
        console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "no console message for a blocked request: {console:#?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
