//! `leaktrace top`: the live trace as a full-screen view, refreshed each interval. What one
//! interval hands the view ([`Interval`]) and how it is drawn ([`draw`]): the leak groups
//! sorted by goroutines, growth or pinned memory, each with its wait reason, blocking and
//! creation sites, age, a trend of its counts and its confidence; the memory panel; the
//! status line. The terminal, the keys and the thread that draws are in [`screen`].

pub mod screen;

use std::{fmt::Write as _, time::Duration};

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Cell, Paragraph, Row, Sparkline, Table, TableState},
};

use crate::{
    detect::{Confidence, LeakGroup},
    model::MemoryPoint,
};

/// The memory points the panel keeps: about four minutes at the default snapshot interval.
pub const MEMORY_POINTS: usize = 120;

/// What the view shows of one interval.
#[derive(Clone, Debug, Default)]
pub struct Interval {
    /// `PID 4242 (server, go1.26.6)`.
    pub target: String,
    pub elapsed: Duration,
    /// The leak groups now, with what they pin where it was estimated.
    pub leaks: Vec<LeakGroup>,
    /// The last [`MEMORY_POINTS`] points of the memory timeline.
    pub memory: Vec<MemoryPoint>,
    pub status: Status,
}

/// The status line: what is probed, how, and at what cost.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The probes placed all the time, by their `--probes` names.
    pub probes: Vec<&'static str>,
    /// Those probed in short windows, and the windows' share of the time.
    pub windowed: Vec<&'static str>,
    pub duty: f64,
    pub windows: u32,
    /// What the probes cost the target at the last budget check (the windows: at the last
    /// window), and the budget (fractions of one CPU; infinite for `--max-overhead off`).
    pub cost: f64,
    pub budget: f64,
    pub snapshots: usize,
    pub lost: u64,
}

/// What the groups are sorted by (largest first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Goroutines,
    /// Goroutines added since the group was first seen.
    Growth,
    /// Heap and stack bytes the group pins.
    Pinned,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Sort::Goroutines => Sort::Growth,
            Sort::Growth => Sort::Pinned,
            Sort::Pinned => Sort::Goroutines,
        }
    }

    fn key(self, l: &LeakGroup) -> u64 {
        match self {
            Sort::Goroutines => l.count as u64,
            Sort::Growth => growth(l) as u64,
            Sort::Pinned => pinned_bytes(l),
        }
    }
}

/// What the person at the keyboard chose: the sort, the selected group, the stack opened.
#[derive(Clone, Debug, Default)]
pub struct Choice {
    pub sort: Sort,
    /// The selected row, in sorted order.
    pub selected: usize,
    /// The selected group's stack is open, scrolled down this many lines.
    pub stack: Option<u16>,
    pub paused: bool,
    /// q or Ctrl-C was pressed: the trace is stopping.
    pub stopping: bool,
}

/// Goroutines added since the group was first seen (0 if it shrank).
fn growth(l: &LeakGroup) -> usize {
    let first = l.growth.first().map_or(l.count, |g| g.1);
    l.count.saturating_sub(first)
}

fn pinned_bytes(l: &LeakGroup) -> u64 {
    l.pinned
        .as_ref()
        .map_or(0, |p| p.heap_bytes + p.stack_bytes)
}

/// The groups in the order shown.
pub fn sorted(leaks: &[LeakGroup], sort: Sort) -> Vec<&LeakGroup> {
    let mut v: Vec<&LeakGroup> = leaks.iter().collect();
    v.sort_by(|a, b| {
        sort.key(b)
            .cmp(&sort.key(a))
            .then(b.count.cmp(&a.count))
            .then_with(|| a.key().cmp(&b.key()))
    });
    v
}

/// `values` as a line of block characters, the last `width` of them, from their lowest
/// (`▁`) to their highest (`█`): a group that grows rises, one that holds is flat.
pub fn spark(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let shown = &values[values.len().saturating_sub(width)..];
    let lo = shown.iter().copied().min().unwrap_or(0);
    let span = shown.iter().copied().max().unwrap_or(0) - lo;
    shown
        .iter()
        .map(|&v| match span {
            0 => BARS[0],
            _ => BARS[((v - lo) * 7).div_ceil(span) as usize],
        })
        .collect()
}

/// `1.5M`, `640K`, `12G`: bytes in binary units, to fit a narrow column.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{b}B"),
        _ if v < 10.0 => format!("{v:.1}{}", UNITS[u]),
        _ => format!("{v:.0}{}", UNITS[u]),
    }
}

/// `45s`, `12m`, `3h`.
fn age(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s => format!("{:.0}h", s / 3600.0),
    }
}

fn file_line(file: &str, line: u32) -> String {
    format!("{}:{line}", file.rsplit('/').next().unwrap_or(file))
}

fn confidence_style(c: Confidence) -> Style {
    match c {
        Confidence::Proven => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Confidence::High => Style::new().fg(Color::Red),
        Confidence::Medium => Style::new().fg(Color::Yellow),
        Confidence::Low => Style::new(),
    }
}

/// Draws one interval, or the selected group's stack when it is open.
pub fn draw(f: &mut Frame, now: &Interval, choice: &Choice) {
    let [title, main, memory, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let shown = sorted(&now.leaks, choice.sort);
    let mut head = format!(
        " leaktrace top | {} | {}s | {} group(s)",
        if now.target.is_empty() {
            "attaching"
        } else {
            &now.target
        },
        now.elapsed.as_secs(),
        now.leaks.len(),
    );
    if choice.paused {
        head.push_str(" | PAUSED");
    }
    if choice.stopping {
        head.push_str(" | stopping");
    }
    f.render_widget(
        Paragraph::new(head).style(
            Style::new()
                .bg(Color::Blue)
                .fg(Color::White)
                .add_modifier(Modifier::BOLD),
        ),
        title,
    );
    match (choice.stack, shown.get(choice.selected)) {
        (Some(scroll), Some(l)) => draw_stack(f, main, l, scroll),
        _ if now.target.is_empty() => f.render_widget(
            Paragraph::new("\n Attaching: reading the target's goroutines, placing the probes."),
            main,
        ),
        _ => draw_groups(f, main, &shown, choice),
    }
    draw_memory(f, memory, &now.memory);
    f.render_widget(Paragraph::new(status_line(&now.status)), status);
    let help = if choice.stack.is_some() {
        " Esc back  Up/Down scroll  q quit and report"
    } else {
        " s sort (g r m)  Up/Down select  Enter stack  p pause  q quit and report"
    };
    f.render_widget(
        Paragraph::new(help).style(Style::new().add_modifier(Modifier::DIM)),
        keys,
    );
}

fn draw_groups(f: &mut Frame, area: Rect, shown: &[&LeakGroup], choice: &Choice) {
    if shown.is_empty() {
        f.render_widget(
            Paragraph::new(
                "\n No goroutine leak suspected yet: a group is listed once its goroutines have \
                 been blocked for --min-age at one site.",
            )
            .wrap(ratatui::widgets::Wrap { trim: false }),
            area,
        );
        return;
    }
    const TREND: usize = 8;
    let rows = shown.iter().map(|l| {
        let counts: Vec<u64> = l.growth.iter().map(|g| g.1 as u64).collect();
        let mut site = format!("[{}]", l.wait_reason);
        if let Some(s) = &l.site {
            let _ = write!(site, " {} {}", s.function, file_line(&s.file, s.line));
        }
        let created = l.created_by.as_ref().map_or(String::new(), |c| {
            format!("  by {} {}", c.function, file_line(&c.file, c.line))
        });
        let conf = format!("{:?}", l.confidence).to_lowercase();
        Row::new([
            Cell::from(l.count.to_string()),
            Cell::from(format!("+{}", growth(l))),
            Cell::from(
                l.pinned
                    .as_ref()
                    .map_or("-".to_string(), |_| bytes(pinned_bytes(l))),
            ),
            Cell::from(age(l.blocked_seconds.max)),
            Cell::from(spark(&counts, TREND)),
            Cell::from(Span::styled(conf, confidence_style(l.confidence))),
            Cell::from(Text::from(vec![Line::from(site), Line::from(created)])),
        ])
        .height(2)
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(4),
            Constraint::Length(TREND as u16),
            Constraint::Length(6),
            Constraint::Min(20),
        ],
    )
    .header(Row::new(header(choice.sort)).style(Style::new().add_modifier(Modifier::BOLD)))
    .row_highlight_style(
        Style::new()
            .bg(Color::DarkGray)
            .add_modifier(Modifier::BOLD),
    );
    let mut state = TableState::default().with_selected(Some(choice.selected));
    f.render_stateful_widget(table, area, &mut state);
}

/// The columns' names, the sorted one marked.
fn header(sort: Sort) -> [String; 7] {
    let mark = |name: &str, by: Sort| match by == sort {
        true => format!("{name}▼"),
        false => name.to_string(),
    };
    [
        mark("COUNT", Sort::Goroutines),
        mark("GROW", Sort::Growth),
        mark("PINS", Sort::Pinned),
        "AGE".into(),
        "TREND".into(),
        "CONF".into(),
        "WAITS AT / CREATED BY".into(),
    ]
}

/// The group's full stack, as the text report prints it, with its evidence.
fn draw_stack(f: &mut Frame, area: Rect, l: &LeakGroup, scroll: u16) {
    let mut text = format!(
        " {} goroutine(s) [{}], blocked {:.0}-{:.0} s, confidence {:?}\n",
        l.count, l.wait_reason, l.blocked_seconds.min, l.blocked_seconds.max, l.confidence
    );
    super::dump::write_frames(&mut text, &l.stack, 0, l.created_by.as_ref(), " ");
    for e in &l.evidence {
        let _ = writeln!(text, " + {e}");
    }
    for a in &l.against {
        let _ = writeln!(text, " - {a}");
    }
    f.render_widget(
        Paragraph::new(text.replace('\t', "    ")).scroll((scroll, 0)),
        area,
    );
}

/// Two rows of two: RSS and heap in use, heap released and madvise, each with its
/// current value and a sparkline of its last points (madvise: bytes passed per snapshot).
fn draw_memory(f: &mut Frame, area: Rect, points: &[MemoryPoint]) {
    let [label, rows] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(2)]).areas(area);
    f.render_widget(
        Paragraph::new(" memory").style(Style::new().add_modifier(Modifier::BOLD)),
        label,
    );
    let madvised: Vec<u64> = points
        .iter()
        .map(|p| p.madvise_bytes.values().sum())
        .collect();
    let madvise_steps: Vec<u64> = std::iter::once(0)
        .chain(madvised.windows(2).map(|w| w[1].saturating_sub(w[0])))
        .collect();
    let series: [(&str, Vec<u64>, u64); 4] = [
        (
            "RSS",
            points.iter().map(|p| p.memory.rss_bytes).collect(),
            points.last().map_or(0, |p| p.memory.rss_bytes),
        ),
        (
            "heap in use",
            points.iter().map(|p| p.memory.heap_inuse).collect(),
            points.last().map_or(0, |p| p.memory.heap_inuse),
        ),
        (
            "released",
            points.iter().map(|p| p.memory.heap_released).collect(),
            points.last().map_or(0, |p| p.memory.heap_released),
        ),
        (
            "madvise",
            madvise_steps,
            madvised.last().copied().unwrap_or(0),
        ),
    ];
    let [top, bottom] = Layout::vertical([Constraint::Length(1); 2]).areas(rows);
    for (i, (name, values, now)) in series.iter().enumerate() {
        let row = if i < 2 { top } else { bottom };
        let [left, right] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(row);
        let cell = if i % 2 == 0 { left } else { right };
        let [text, plot] =
            Layout::horizontal([Constraint::Length(19), Constraint::Min(1)]).areas(cell);
        f.render_widget(
            Paragraph::new(format!(" {name:<11}{:>6}", bytes(*now))),
            text,
        );
        let width = plot.width.saturating_sub(1) as usize;
        let data = &values[values.len().saturating_sub(width)..];
        f.render_widget(
            Sparkline::default()
                .data(data.iter().copied())
                .style(Style::new().fg(Color::Cyan)),
            plot,
        );
    }
}

/// `12 snapshots | budget 0.21% of 1% | probes park,wake | windows 17%: create,exit`: the
/// most telling first, as a narrow screen cuts the end.
pub fn status_line(s: &Status) -> String {
    let mut line = format!(" {} snapshots", s.snapshots);
    if s.budget.is_finite() {
        let _ = write!(
            line,
            " | budget {:.2}% of {}%",
            s.cost * 100.0,
            s.budget * 100.0
        );
    } else {
        let _ = write!(line, " | cost {:.2}%, no budget", s.cost * 100.0);
    }
    if s.lost > 0 {
        let _ = write!(line, " | lost {}", s.lost);
    }
    let _ = write!(
        line,
        " | probes {}",
        match s.probes.is_empty() {
            true => "none".to_string(),
            false => s.probes.join(","),
        }
    );
    if !s.windowed.is_empty() {
        let _ = write!(
            line,
            " | windows {:.0}% ({}): {}",
            s.duty * 100.0,
            s.windows,
            s.windowed.join(",")
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines() {
        assert_eq!(spark(&[0, 1, 2, 4, 8], 10), "▁▂▃▅█");
        assert_eq!(spark(&[5, 5, 5], 2), "▁▁");
        assert_eq!(spark(&[1, 10, 12, 14], 3), "▁▅█");
        assert_eq!(spark(&[], 5), "");
        assert_eq!(spark(&[0, 0], 5), "▁▁");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(64 << 20), "64M");
    }
}
