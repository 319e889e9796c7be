//! Incremental goroutine snapshots against full ones taken at the same moment, on a target
//! where some goroutines move (wake up and park again with another stack) and the others do
//! not: the incremental census must read only the stacks that may have changed and still see
//! exactly what a full walk sees. On the oldest and newest Go under test, whose runtimes bump
//! `g.trackingSeq` on different transitions.

mod support;

use std::{collections::BTreeMap, io::Write as _, sync::Arc, thread, time::Duration};

use leaktrace::{
    census::{Census, CreatedBy, GoroutineSnapshot, StackFrame, channels},
    tracee::Target,
};
use support::{Fixture, build_fixture, go_versions};

const GOROUTINES: usize = 2000;
const MOVED: usize = 100;

type View = BTreeMap<
    u64,
    (
        u32,
        Arc<str>,
        Vec<StackFrame>,
        Option<CreatedBy>,
        Option<Arc<str>>,
    ),
>;

/// `_Gsyscall` (runtime/runtime2.go, Go 1.21-1.27).
const G_SYSCALL: u32 = 3;

/// Everything a snapshot says of the program's goroutines but how long they have waited (a
/// clock reading). Runtime goroutines (the GC's workers) may run between two snapshots, and
/// so may main, which reads the next command in a system call: both snapshots read the
/// stack of a goroutine in a system call anew, so it proves nothing here.
fn view(gs: &[GoroutineSnapshot]) -> View {
    gs.iter()
        .filter(|g| !g.system && g.status != G_SYSCALL)
        .map(|g| {
            let value = (
                g.status,
                g.state.clone(),
                g.stack.to_vec(),
                g.created_by.clone(),
                g.start_function.clone(),
            );
            (g.goid, value)
        })
        .collect()
}

/// The channels the census says the blocked goroutines of `gs` (its last snapshot) wait on
/// are those read goroutine by goroutine; how many goroutines' sudogs it read to say so.
fn check_channels(target: &Target, census: &mut Census, gs: &[GoroutineSnapshot]) -> usize {
    let blocked: Vec<&GoroutineSnapshot> = gs
        .iter()
        .filter(|g| !g.system && matches!(&*g.state, "chan receive" | "select"))
        .collect();
    assert_eq!(blocked.len(), GOROUTINES, "goroutines blocked on channels");
    let got = census.channels(target, &blocked).unwrap();
    for (g, chans) in blocked.iter().zip(&got) {
        let want = channels::waited_on(target, g.g_addr);
        assert_eq!(*chans, want, "goroutine {}", g.goid);
    }
    census.chains_read()
}

fn move_goroutines(fixture: &mut Fixture, k: usize) {
    let stdin = fixture.child.stdin.as_mut().unwrap();
    writeln!(stdin, "move {k}").unwrap();
    stdin.flush().unwrap();
    fixture
        .stderr
        .wait_for(&format!("moved {k}"), Duration::from_secs(60));
}

fn incremental_equals_full(version: &str) {
    let bin = build_fixture("parkedstacks", version, &[]);
    let mut fixture = Fixture::start(&bin, &["-n", &GOROUTINES.to_string(), "-no-worker"]);
    fixture.stderr.wait_for("ready", Duration::from_secs(60));
    let target = Target::inspect(fixture.pid()).unwrap();
    let mut census = Census::new();
    let gs = census.snapshot(&target).unwrap();
    let mut before = view(&gs);
    assert!(
        census.stacks_read() >= GOROUTINES,
        "Go {version}: the first snapshot reads every stack"
    );
    assert_eq!(check_channels(&target, &mut census, &gs), GOROUTINES);
    let mut last = gs;
    for round in 1..=3 {
        move_goroutines(&mut fixture, MOVED);
        // The last snapshot, given back, holds the next one (unless allgs outgrew it). Its
        // entries are written over in place; reversed once, each then held another
        // goroutine, and every field must still come out as a full snapshot has it.
        if round == 2 {
            last.reverse();
        }
        let (recycled, capacity) = (last.as_ptr(), last.capacity());
        census.recycle(last);
        let gs = census.snapshot(&target).unwrap();
        assert!(
            gs.as_ptr() == recycled || gs.capacity() > capacity,
            "Go {version} round {round}: the snapshot given back was not reused"
        );
        let incremental = view(&gs);
        let read = census.stacks_read();
        // Only the moved goroutines' sudogs are read again.
        let chains = check_channels(&target, &mut census, &gs);
        assert!(
            (MOVED..GOROUTINES / 4).contains(&chains),
            "Go {version} round {round}: the channels of {chains} goroutines read again"
        );
        let full_gs = Census::full().snapshot(&target).unwrap();
        let full = view(&full_gs);
        // What the view leaves out but a goroutine keeps: its g, and what started it.
        let fixed: BTreeMap<u64, (u64, bool)> = full_gs
            .iter()
            .map(|g| (g.goid, (g.g_addr, g.system)))
            .collect();
        for g in &gs {
            if let Some(&f) = fixed.get(&g.goid) {
                assert_eq!(
                    (g.g_addr, g.system),
                    f,
                    "Go {version} round {round}: goroutine {}",
                    g.goid
                );
            }
        }
        assert_eq!(
            incremental.len(),
            full.len(),
            "Go {version} round {round}: goroutines"
        );
        for (goid, f) in &full {
            assert_eq!(
                incremental.get(goid),
                Some(f),
                "Go {version} round {round}: goroutine {goid} differs between the incremental and the full snapshot"
            );
        }
        let changed = full
            .iter()
            .filter(|(goid, f)| before.get(goid).is_none_or(|b| b.2 != f.2))
            .count();
        assert!(
            changed >= MOVED,
            "Go {version} round {round}: {changed} stacks changed, {MOVED} goroutines moved"
        );
        // The moved goroutines, main (which woke them), and runtime goroutines; not the
        // thousands that stayed parked.
        assert!(
            (MOVED..GOROUTINES / 4).contains(&read),
            "Go {version} round {round}: the incremental snapshot read {read} stacks"
        );
        before = full;
        last = gs;
    }
}

#[test]
fn an_incremental_snapshot_equals_a_full_one_taken_at_the_same_moment() {
    let versions = go_versions();
    let mut picked = vec![versions[0].clone()];
    picked.extend(versions.last().filter(|v| **v != versions[0]).cloned());
    let runs: Vec<_> = picked
        .into_iter()
        .map(|v| thread::spawn(move || incremental_equals_full(&v)))
        .collect();
    for r in runs {
        r.join().unwrap();
    }
}

/// The channels every blocked goroutine waits on, read level by level for all of them at
/// once, are those read goroutine by goroutine: the fixture's goroutines wait in a receive
/// on a channel of their own or in a select on it and on one channel they all share.
#[test]
fn channels_read_for_all_goroutines_at_once_match_those_read_one_by_one() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("parkedstacks", &version, &[]);
    let mut fixture = Fixture::start(&bin, &["-n", &GOROUTINES.to_string(), "-no-worker"]);
    fixture.stderr.wait_for("ready", Duration::from_secs(60));
    let target = Target::inspect(fixture.pid()).unwrap();
    let gs = Census::full().snapshot(&target).unwrap();
    let blocked: Vec<u64> = gs
        .iter()
        .filter(|g| !g.system && matches!(&*g.state, "chan receive" | "select"))
        .map(|g| g.g_addr)
        .collect();
    assert_eq!(blocked.len(), GOROUTINES, "goroutines blocked on channels");
    let all = channels::waited_on_all(&target, &blocked).unwrap();
    assert_eq!(all.len(), blocked.len());
    let mut selects = 0;
    let mut shared = std::collections::HashMap::<u64, usize>::new();
    for (g, chans) in blocked.iter().zip(&all) {
        assert_eq!(
            *chans,
            channels::waited_on(&target, *g),
            "goroutine at {g:#x}"
        );
        assert!(matches!(chans.len(), 1 | 2), "{chans:?}");
        selects += usize::from(chans.len() == 2);
        for c in chans {
            *shared.entry(c.addr).or_default() += 1;
        }
    }
    // One goroutine in three selects, also on the one channel they share.
    assert_eq!(selects, GOROUTINES.div_ceil(3));
    assert_eq!(
        shared.values().filter(|&&n| n == selects).count(),
        1,
        "the channel every select waits on"
    );
    assert_eq!(
        shared.len(),
        GOROUTINES + 1,
        "one channel each, and the shared one"
    );
}

/// Goroutines created at one `go` statement that park at one PC with stacks of one length
/// and different frames (five functions with frames of one size call each other in turn,
/// each goroutine entering the cycle at another): a full snapshot, which takes a stack for
/// one of the same shape seen before when the words its walk read match, sees them as a
/// census that unwinds every stack does.
#[test]
fn stacks_of_one_shape_with_different_frames_are_told_apart() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("parkedstacks", &version, &[]);
    let mut fixture = Fixture::start(&bin, &["-n", "600", "-no-worker", "-one-site"]);
    fixture.stderr.wait_for("ready", Duration::from_secs(60));
    let target = Target::inspect(fixture.pid()).unwrap();
    let mut census = Census::full();
    census.snapshot(&target).unwrap(); // learns the shapes
    let shared = view(&census.snapshot(&target).unwrap());
    let walked = view(&Census::unwinding_every_stack().snapshot(&target).unwrap());
    assert_eq!(shared.len(), walked.len());
    for (goid, w) in &walked {
        assert_eq!(shared.get(goid), Some(w), "goroutine {goid}");
    }
    // 5 entry functions x 3 depths, from one creation site.
    let sites: std::collections::BTreeSet<_> = walked
        .values()
        .filter_map(|v| v.3.as_ref().map(|c| c.pc))
        .collect();
    let stacks: std::collections::BTreeSet<_> = walked
        .values()
        .filter(|v| v.2.len() >= 10)
        .map(|v| v.2.iter().map(|f| f.pc).collect::<Vec<_>>())
        .collect();
    assert!(
        stacks.len() >= 15,
        "{} distinct stacks, {} creation sites",
        stacks.len(),
        sites.len()
    );
}
