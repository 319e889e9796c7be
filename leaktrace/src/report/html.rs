//! `report.html`: the report as one self-contained page to look at, print or open on a
//! phone. The memory verdict in one sentence at the top, then plots drawn as inline SVG (the
//! memory timeline, madvise by advice, each leak group's growth, park durations and
//! allocation sizes by percentile), then the leak groups with their stacks and evidence.
//!
//! The page loads nothing: no script, no font, no image, no style sheet from anywhere, and
//! its Content-Security-Policy forbids it (`default-src 'none'`). Every plotted point is a
//! `<circle class="pt">` carrying the report's own value (`data-plot`, `data-series`,
//! `data-x`, `data-y`, in report.json's units), so that a program can check the picture
//! against report.json.

use std::fmt::Write as _;

use super::{live::duration_ns, schema::Report};
use crate::{
    detect::{LeakGroup, verdict::VerdictKind},
    model::MemoryPoint,
};

/// Okabe and Ito's palette: told apart by people with any common colour-vision deficiency,
/// and in grey when printed.
const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
];

/// Leak groups drawn in the growth plot; the rest are listed below it.
const GROWTH_GROUPS: usize = 8;

/// The plot area, in SVG user units (the SVG scales to the page's width).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 34.0;

const STYLE: &str = "
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1b1b1b;
  margin: 0 auto; padding: 0 12px 32px; max-width: 960px; }
h1 { font-size: 1.35em; margin: 16px 0 4px; }
h2 { font-size: 1.15em; margin: 28px 0 6px; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin: 18px 0 4px; }
.verdict { font-size: 1.1em; padding: 10px 12px; border-left: 5px solid #D55E00;
  background: #fdf3ec; margin: 12px 0; }
.verdict.ok { border-color: #009E73; background: #eef8f4; }
.meta { color: #555; font-size: 0.9em; }
figure { margin: 12px 0 20px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.plot { width: 100%; height: auto; display: block; }
svg.plot text { font: 11px system-ui, sans-serif; fill: #333; }
svg.plot .grid { stroke: #e4e4e4; stroke-width: 1; }
svg.plot .axis { stroke: #888; stroke-width: 1; }
svg.plot polyline { fill: none; stroke-width: 2; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.85em; margin: 2px 0 0; padding: 0; list-style: none; }
.legend span { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; border-radius: 2px; }
.group { border: 1px solid #ddd; border-radius: 6px; padding: 4px 12px 10px; margin: 14px 0;
  break-inside: avoid; page-break-inside: avoid; }
.badge { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 0.85em; color: #fff; background: #777; }
.badge.high { background: #b3261e; } .badge.medium { background: #b36b00; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 0.85em; white-space: pre; }
ul.evidence { padding-left: 1.2em; margin: 4px 0; }
ul.evidence li.against { color: #555; }
table { border-collapse: collapse; font-size: 0.9em; width: 100%; }
td, th { text-align: left; padding: 2px 8px 2px 0; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.wrap { overflow-x: auto; }
@media (max-width: 600px) { body { font-size: 14px; } pre { font-size: 0.78em; }
  svg.plot text { font-size: 16px; } }
@media print { body { max-width: none; font-size: 11pt; } pre { white-space: pre-wrap; }
  h2 { break-after: avoid; page-break-after: avoid; } }
";

/// The unit of a plot's values: how its ticks and tooltips read.
#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Nanoseconds,
    Count,
}

impl Unit {
    /// The base of a log axis in this unit: bytes in powers of two, the rest of ten.
    fn log_base(self) -> f64 {
        match self {
            Unit::Bytes => 2.0,
            _ => 10.0,
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Unit::Bytes => bytes(v),
            Unit::Nanoseconds => duration_ns(v.max(0.0) as u64).replace(".0", ""),
            Unit::Count => {
                if v.fract() == 0.0 {
                    format!("{v}")
                } else {
                    format!("{v:.1}")
                }
            }
        }
    }
}

fn bytes(v: f64) -> String {
    let (n, unit) = match v {
        v if v >= 1024.0 * 1024.0 * 1024.0 => (v / (1024.0 * 1024.0 * 1024.0), "GiB"),
        v if v >= 1024.0 * 1024.0 => (v / (1024.0 * 1024.0), "MiB"),
        v if v >= 1024.0 => (v / 1024.0, "KiB"),
        v => return format!("{v:.0} B"),
    };
    format!("{} {unit}", format!("{n:.1}").trim_end_matches(".0"))
}

/// The power of 1024 that byte ticks are rounded in: ticks of 0.5 MiB, not of 524288 B.
fn byte_scale(max: f64) -> f64 {
    let mut scale = 1.0;
    while max / scale >= 2048.0 {
        scale *= 1024.0;
    }
    scale
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of a plot: its points as (x, y) in the report's units.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A plot's x axis: seconds of the trace, or named categories at 0, 1, 2, ...
enum XAxis {
    Seconds,
    Categories(&'static [&'static str]),
}

struct Plot<'a> {
    /// The `data-plot` name of its points.
    id: &'a str,
    title: &'a str,
    x: XAxis,
    unit: Unit,
    /// A logarithmic y axis, for values that span orders of magnitude.
    log: bool,
}

/// Round tick values: about five on a linear axis, from `lo` up to the first at or above
/// `hi`; whole powers between `lo` and `hi` on a log axis (`lo`, `hi` are then logarithms
/// of the values).
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
        let step = ((b - a) as f64 / 6.0).ceil().max(1.0) as usize;
        return (a..=b)
            .step_by(step)
            .map(|e| e as f64)
            .filter(|e| *e >= lo - 1e-9 && *e <= hi + 1e-9)
            .collect();
    }
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Writes `plot` with `series` as an SVG line chart and its legend.
fn plot(out: &mut String, p: &Plot, series: &[Series]) {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let base = p.unit.log_base();
    let yv = |y: f64| if p.log { y.max(1.0).log(base) } else { y };
    let (mut x0, mut x1) = match p.x {
        XAxis::Seconds => all().fold((0.0f64, f64::MIN), |(a, b), &(x, _)| (a.min(x), b.max(x))),
        // Half a category of room each side, for the labels at the ends.
        XAxis::Categories(c) => (-0.4, c.len().max(2) as f64 - 0.6),
    };
    let (mut y0, mut y1) = all().fold((f64::MAX, f64::MIN), |(a, b), &(_, y)| {
        (a.min(yv(y)), b.max(yv(y)))
    });
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    }
    if !p.log {
        y0 = y0.min(0.0);
    } else {
        y0 = y0.floor();
        y1 = y1.ceil();
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        // Nothing varies (all zero, say): an axis in whole units, not fractions of a byte.
        y1 = y0
            + match (p.unit, p.log) {
                (Unit::Bytes, false) => 1024.0 * 1024.0,
                (Unit::Count, false) => 5.0,
                _ => 1.0,
            };
    }
    // The y axis: grid lines and labels; bytes on a linear axis in round KiB, MiB or GiB.
    // A linear axis ends on its last tick, so that its top line is labelled.
    let scale = match (p.unit, p.log) {
        (Unit::Bytes, false) => byte_scale(y1),
        _ => 1.0,
    };
    let y_ticks = ticks(y0 / scale, y1 / scale, p.log);
    if !p.log
        && let Some(&top) = y_ticks.last()
    {
        y1 = y1.max(top * scale);
    }
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let sy = |y: f64| HEIGHT - BOTTOM - (yv(y) - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
    let _ = writeln!(
        out,
        "<figure id=\"{id}\"><figcaption>{title}</figcaption>\n<svg class=\"plot\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{title}\">",
        id = esc(p.id),
        title = esc(p.title)
    );
    for t in y_ticks {
        let v = if p.log { base.powf(t) } else { t * scale };
        let y = sy(v);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            esc(&p.unit.format(v))
        );
    }
    // The x axis.
    let axis = HEIGHT - BOTTOM;
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{axis}\" y2=\"{axis}\"/>",
        WIDTH - RIGHT
    );
    let labels: Vec<(f64, String)> = match p.x {
        XAxis::Seconds => ticks(x0, x1, false)
            .into_iter()
            .filter(|t| *t <= x1 + 1e-9)
            .map(|t| (t, format!("{} s", Unit::Count.format(t))))
            .collect(),
        XAxis::Categories(c) => c
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64, n.to_string()))
            .collect(),
    };
    for (t, label) in labels {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            sx(t),
            axis + 16.0,
            esc(&label)
        );
    }
    // The lines, then their points (on top).
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline stroke=\"{color}\" points=\"{}\"/>",
            pts.join(" ")
        );
        for &(x, y) in &s.points {
            let at = match p.x {
                XAxis::Seconds => format!("{x:.1} s"),
                XAxis::Categories(c) => c.get(x as usize).copied().unwrap_or("").to_string(),
            };
            let _ = writeln!(
                out,
                "<circle class=\"pt\" data-plot=\"{}\" data-series=\"{}\" data-x=\"{x}\" data-y=\"{y}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"><title>{}: {} at {}</title></circle>",
                esc(p.id),
                esc(&s.name),
                sx(x),
                sy(y),
                esc(&s.name),
                esc(&p.unit.format(y)),
                esc(&at)
            );
        }
    }
    out.push_str("</svg>\n<ul class=\"legend\">");
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            "<li><span style=\"background:{}\"></span>{}</li>",
            PALETTE[i % PALETTE.len()],
            esc(&s.name)
        );
    }
    out.push_str("</ul></figure>\n");
}

fn timeline(points: &[MemoryPoint], name: &str, f: impl Fn(&MemoryPoint) -> u64) -> Series {
    Series {
        name: name.to_string(),
        points: points.iter().map(|p| (p.seconds, f(p) as f64)).collect(),
    }
}

/// The verdict's kind as a person would say it.
fn verdict_title(kind: VerdictKind) -> &'static str {
    match kind {
        VerdictKind::NotALeakPagesNotYetReturned => "Not a leak: pages not yet returned to the OS",
        VerdictKind::GoroutineLeakHoldingHeap => "Goroutine leak holding heap",
        VerdictKind::GoroutineLeak => "Goroutine leak",
        VerdictKind::HeapGrowthWithoutGoroutineGrowth => "Heap growth without goroutine growth",
        VerdictKind::Stable => "Stable",
        VerdictKind::InsufficientData => "Not enough data",
    }
}

/// The percentiles drawn for each histogram, as report.json names them.
const PERCENTILES: [&str; 6] = ["min", "p50", "p90", "p99", "p999", "max"];

/// Series of the histograms whose tag starts with `prefix`, one point per percentile.
fn percentile_series(r: &Report, prefix: &str, strip: bool) -> Vec<Series> {
    r.histograms
        .iter()
        .filter(|(t, p)| t.starts_with(prefix) && p.count > 0)
        .map(|(t, p)| Series {
            name: if strip {
                t[prefix.len()..].replace('_', " ")
            } else {
                t.clone()
            },
            points: [p.min, p.p50, p.p90, p.p99, p.p999, p.max]
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v as f64))
                .collect(),
        })
        .collect()
}

/// The whole page.
pub fn html(r: &Report) -> String {
    let mut out = String::new();
    let title = format!("leaktrace report: PID {}", r.pid);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", esc(&title));
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} ({}), observed {:.1} s in {} snapshots; stopped: {}.</p>",
        esc(&r.executable),
        esc(&r.go_version),
        r.observed_seconds,
        r.snapshots,
        esc(&r.stopped)
    );
    let v = &r.memory_verdict;
    let calm = matches!(
        v.kind,
        VerdictKind::Stable | VerdictKind::NotALeakPagesNotYetReturned
    ) && r.leaks.is_empty();
    let _ = writeln!(
        out,
        "<p class=\"verdict{}\" id=\"verdict\"><strong>{}</strong>: {}.</p>",
        if calm { " ok" } else { "" },
        verdict_title(v.kind),
        esc(v.explanation.trim_end_matches('.'))
    );
    let _ = writeln!(
        out,
        "<p>{} suspected leak group(s), {} goroutine(s) in them; {} goroutines created and {} exited while traced{}.</p>",
        r.leaks.len(),
        r.leaks.iter().map(|l| l.count).sum::<usize>(),
        r.goroutines_created,
        r.goroutines_exited,
        r.goroutines_scaling
            .as_ref()
            .map(|s| format!(
                " (sampled, {:.1}% of the time: scaled by the {})",
                s.duty * 100.0,
                s.method
            ))
            .unwrap_or_default()
    );

    out.push_str("<h2>Memory</h2>\n");
    if r.memory_timeline.is_empty() {
        out.push_str("<p>No memory reading was taken.</p>\n");
    } else {
        let tl = &r.memory_timeline;
        plot(
            &mut out,
            &Plot {
                id: "memory",
                title: "RSS and the Go heap",
                x: XAxis::Seconds,
                unit: Unit::Bytes,
                log: false,
            },
            &[
                timeline(tl, "RSS", |p| p.memory.rss_bytes),
                timeline(tl, "heap in use", |p| p.memory.heap_inuse),
                timeline(tl, "heap released", |p| p.memory.heap_released),
            ],
        );
        let advices: Vec<&String> = tl
            .last()
            .map(|p| p.madvise_bytes.keys().collect())
            .unwrap_or_default();
        let madvise: Vec<Series> = advices
            .iter()
            .map(|a| {
                timeline(tl, &format!("madvise {a}"), |p| {
                    p.madvise_bytes.get(*a).copied().unwrap_or(0)
                })
            })
            .collect();
        if !madvise.is_empty() {
            plot(
                &mut out,
                &Plot {
                    id: "madvise",
                    title: "Bytes passed to madvise since the trace started, by advice",
                    x: XAxis::Seconds,
                    unit: Unit::Bytes,
                    log: false,
                },
                &madvise,
            );
        }
    }

    if !r.leaks.is_empty() {
        out.push_str("<h2>Leak groups over time</h2>\n");
        let growth: Vec<Series> = r
            .leaks
            .iter()
            .take(GROWTH_GROUPS)
            .enumerate()
            .map(|(i, l)| Series {
                name: format!("#{} {}", i + 1, group_name(l)),
                points: l.growth.iter().map(|&(s, n)| (s, n as f64)).collect(),
            })
            .collect();
        plot(
            &mut out,
            &Plot {
                id: "growth",
                title: "Goroutines in each leak group at each snapshot",
                x: XAxis::Seconds,
                unit: Unit::Count,
                log: false,
            },
            &growth,
        );
    }

    let parks = percentile_series(r, "park_ns.", true);
    let allocs = percentile_series(r, "alloc_size_bytes", false);
    if !parks.is_empty() || !allocs.is_empty() {
        out.push_str("<h2>Distributions</h2>\n");
    }
    if !parks.is_empty() {
        plot(
            &mut out,
            &Plot {
                id: "park",
                title: "Park duration by wait reason (percentiles, log scale)",
                x: XAxis::Categories(&PERCENTILES),
                unit: Unit::Nanoseconds,
                log: true,
            },
            &parks,
        );
    }
    if !allocs.is_empty() {
        plot(
            &mut out,
            &Plot {
                id: "alloc_size",
                title: "Allocation size (percentiles, log scale)",
                x: XAxis::Categories(&PERCENTILES),
                unit: Unit::Bytes,
                log: true,
            },
            &allocs,
        );
    }

    if !r.allocation_sites.sites.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Top allocation sites</h2>\n<p class=\"meta\">{}</p>\n<div class=\"wrap\"><table><tr><th>allocated</th><th>in use</th><th>where</th></tr>",
            esc(&r.allocation_sites.source)
        );
        for s in r.allocation_sites.sites.iter().take(10) {
            let _ = writeln!(
                out,
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}<br><small>{}:{}</small></td></tr>",
                bytes(s.alloc_bytes as f64),
                bytes(s.inuse_bytes as f64),
                esc(&s.function),
                esc(&s.file),
                s.line
            );
        }
        out.push_str("</table></div>\n");
    }

    out.push_str("<h2>Leak groups</h2>\n");
    if r.leaks.is_empty() {
        let _ = writeln!(
            out,
            "<p>No goroutine leak suspected in {:.1} s of observation (--min-age {:.1} s).</p>",
            r.observed_seconds, r.min_age_seconds
        );
    }
    for (i, l) in r.leaks.iter().enumerate() {
        group(&mut out, i + 1, l);
    }
    out.push_str("</body></html>\n");
    out
}

/// A group's short name: its wait reason and where it blocks.
fn group_name(l: &LeakGroup) -> String {
    match &l.site {
        Some(s) => format!("[{}] {}", l.wait_reason, s.function),
        None => format!("[{}]", l.wait_reason),
    }
}

fn group(out: &mut String, n: usize, l: &LeakGroup) {
    let confidence = format!("{:?}", l.confidence).to_lowercase();
    let _ = writeln!(
        out,
        "<section class=\"group\" id=\"group-{n}\"><h3>#{n}: {} goroutine(s) {} <span class=\"badge {confidence}\">{confidence}</span></h3>",
        l.count,
        esc(&group_name(l))
    );
    let _ = writeln!(
        out,
        "<p>Blocked {:.1}-{:.1} s (score {}).</p>",
        l.blocked_seconds.min, l.blocked_seconds.max, l.score
    );
    let mut stack = String::new();
    super::dump::write_frames(&mut stack, &l.stack, 0, l.created_by.as_ref(), "");
    let _ = writeln!(out, "<pre>{}</pre>", esc(stack.trim_end()));
    out.push_str("<ul class=\"evidence\">");
    for e in &l.evidence {
        let _ = write!(out, "<li>+ {}</li>", esc(e));
    }
    for a in &l.against {
        let _ = write!(out, "<li class=\"against\">- {}</li>", esc(a));
    }
    out.push_str("</ul>\n");
    if let Some(c) = &l.channel {
        let _ = writeln!(
            out,
            "<p>Channel: {} distinct, {}, {}{}.</p>",
            c.distinct,
            if c.capacities == [0] {
                "unbuffered".to_string()
            } else {
                format!("capacity {:?}", c.capacities)
            },
            if c.other_side_waiting {
                "goroutines waiting on the other side"
            } else {
                "nobody waiting on the other side"
            },
            if c.closed { ", closed" } else { "" }
        );
    }
    if let Some(p) = &l.pinned {
        let _ = writeln!(
            out,
            "<p>Pins about {}{} of heap ({} objects) and {} of stacks.</p>",
            if p.truncated { "at least " } else { "" },
            bytes(p.heap_bytes as f64),
            p.heap_objects,
            bytes(p.stack_bytes as f64)
        );
    }
    if let Some(a) = &l.allocated {
        let _ = writeln!(
            out,
            "<p>Allocated while traced ({}): {} objects, {}.</p>",
            esc(a.source),
            a.count,
            bytes(a.bytes as f64)
        );
    }
    let ids: Vec<String> = l.goids.iter().take(20).map(u64::to_string).collect();
    let more = if l.goids.len() > 20 {
        format!(" ... ({} more)", l.goids.len() - 20)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "<p class=\"meta\">Goroutines: {}{more}</p></section>",
        ids.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, false), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0, 7.3, false), [0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(ticks(0.0, 5.0, false), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(ticks(3.0, 9.0, true), [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        assert_eq!(byte_scale(3.5 * 1024.0 * 1024.0), 1024.0 * 1024.0);
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(4.0 * 1024.0 * 1024.0), "4 MiB");
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
