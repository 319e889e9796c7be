//! Profiles in pprof's format (github.com/google/pprof/proto/profile.proto, gzipped), so that
//! `go tool pprof`, Pyroscope, Parca and every other pprof reader open what leaktrace saw:
//! a goroutine profile of the leak groups, one of every goroutine (`dump -o`), a
//! heap-style profile of what they pin.
//!
//! The protobuf is written by hand: profile.proto is six small messages, and a varint and a
//! length prefix are all the wire format they need. Strings, functions and locations are
//! deduplicated as pprof expects; there is no mapping (stacks arrive already symbolized), so
//! every location has address 0 and says where it is with its `line` entry.

use std::{collections::HashMap, io::Write as _};

use flate2::{Compression, write::GzEncoder};

use crate::{
    alloc::{
        HeapProfile, profile,
        sampler::{self, SizeClasses},
    },
    probes::Samples,
    report::dump::Dump,
    tracee::{Target, pclntab::Frame},
};

/// What a value in a sample measures, as pprof names it: `("goroutine", "count")`,
/// `("inuse_space", "bytes")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueType {
    pub kind: String,
    pub unit: String,
}

impl ValueType {
    pub fn new(kind: &str, unit: &str) -> Self {
        ValueType {
            kind: kind.to_string(),
            unit: unit.to_string(),
        }
    }
}

/// One stack and its values, one per `Profile::sample_types`.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Innermost frame first, as `Pclntab::symbolize` and Go's tracebacks order them.
    pub stack: Vec<Frame>,
    pub values: Vec<i64>,
    /// `(key, value)`: shown by `pprof -traces` and `-tags`, selected by `-tagfocus`.
    pub labels: Vec<(String, String)>,
    /// `(key, value, unit)`, unit such as `bytes` or `seconds` (may be empty).
    pub num_labels: Vec<(String, i64, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub sample_types: Vec<ValueType>,
    pub samples: Vec<Sample>,
    /// What one event of the sampling period is (`("space", "bytes")` for Go's heap profile).
    pub period_type: Option<ValueType>,
    pub period: i64,
    /// When the profile was taken, in nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    pub duration_nanos: i64,
    /// The `kind` of the sample type that pprof shows unless told otherwise; pprof's own
    /// default is the last sample type.
    pub default_sample_type: Option<String>,
    /// Free text that `pprof -comments` prints.
    pub comments: Vec<String>,
}

/// The profile as the gzipped protobuf that pprof reads (`go tool pprof FILE`).
///
/// Every sample must have one value per sample type (pprof refuses the file otherwise,
/// far from the code that built it): a sample that does not is a bug, and panics here.
pub fn encode(p: &Profile) -> Vec<u8> {
    if let Some(s) = p
        .samples
        .iter()
        .find(|s| s.values.len() != p.sample_types.len())
    {
        panic!(
            "pprof sample with {} values for {} sample types ({:?})",
            s.values.len(),
            p.sample_types.len(),
            s.stack.first().map(|f| &f.function)
        );
    }
    let raw = encode_raw(p);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&raw).expect("gzip into a Vec cannot fail");
    gz.finish().expect("gzip into a Vec cannot fail")
}

// Field numbers from profile.proto (the same as Go's runtime/pprof/proto.go, Go 1.21-1.27).
const PROFILE_SAMPLE_TYPE: u32 = 1;
const PROFILE_SAMPLE: u32 = 2;
const PROFILE_LOCATION: u32 = 4;
const PROFILE_FUNCTION: u32 = 5;
const PROFILE_STRING_TABLE: u32 = 6;
const PROFILE_TIME_NANOS: u32 = 9;
const PROFILE_DURATION_NANOS: u32 = 10;
const PROFILE_PERIOD_TYPE: u32 = 11;
const PROFILE_PERIOD: u32 = 12;
const PROFILE_COMMENT: u32 = 13;
const PROFILE_DEFAULT_SAMPLE_TYPE: u32 = 14;
const VALUE_TYPE_TYPE: u32 = 1;
const VALUE_TYPE_UNIT: u32 = 2;
const SAMPLE_LOCATION_ID: u32 = 1;
const SAMPLE_VALUE: u32 = 2;
const SAMPLE_LABEL: u32 = 3;
const LABEL_KEY: u32 = 1;
const LABEL_STR: u32 = 2;
const LABEL_NUM: u32 = 3;
const LABEL_NUM_UNIT: u32 = 4;
const LOCATION_ID: u32 = 1;
const LOCATION_LINE: u32 = 4;
const LINE_FUNCTION_ID: u32 = 1;
const LINE_LINE: u32 = 2;
const FUNCTION_ID: u32 = 1;
const FUNCTION_NAME: u32 = 2;
const FUNCTION_SYSTEM_NAME: u32 = 3;
const FUNCTION_FILENAME: u32 = 4;

/// The uncompressed protobuf.
fn encode_raw(p: &Profile) -> Vec<u8> {
    let mut strings = Strings::default();
    // Function IDs by (name, file) and location IDs by (function, line); both start at 1
    // because 0 means "none" in profile.proto.
    let mut functions: HashMap<(i64, i64), u64> = HashMap::new();
    let mut function_list: Vec<(u64, i64, i64)> = Vec::new();
    let mut locations: HashMap<(u64, u32), u64> = HashMap::new();
    let mut location_list: Vec<(u64, u64, u32)> = Vec::new();

    let mut out = Pb::default();
    for t in &p.sample_types {
        out.message(PROFILE_SAMPLE_TYPE, |m| value_type(m, &mut strings, t));
    }
    for s in &p.samples {
        let ids: Vec<u64> = s
            .stack
            .iter()
            .map(|f| {
                let name = strings.index(&f.function);
                let file = strings.index(&f.file);
                let next = function_list.len() as u64 + 1;
                let function = *functions.entry((name, file)).or_insert_with(|| {
                    function_list.push((next, name, file));
                    next
                });
                let next = location_list.len() as u64 + 1;
                *locations.entry((function, f.line)).or_insert_with(|| {
                    location_list.push((next, function, f.line));
                    next
                })
            })
            .collect();
        out.message(PROFILE_SAMPLE, |m| {
            m.packed(SAMPLE_LOCATION_ID, ids.iter().copied());
            m.packed(SAMPLE_VALUE, s.values.iter().map(|&v| v as u64));
            for (key, value) in &s.labels {
                m.message(SAMPLE_LABEL, |l| {
                    l.int(LABEL_KEY, strings.index(key));
                    l.int(LABEL_STR, strings.index(value));
                });
            }
            for (key, num, unit) in &s.num_labels {
                m.message(SAMPLE_LABEL, |l| {
                    l.int(LABEL_KEY, strings.index(key));
                    l.int(LABEL_NUM, *num);
                    l.int(LABEL_NUM_UNIT, strings.index(unit));
                });
            }
        });
    }
    for &(id, function, line) in &location_list {
        out.message(PROFILE_LOCATION, |m| {
            m.uint(LOCATION_ID, id);
            m.message(LOCATION_LINE, |l| {
                l.uint(LINE_FUNCTION_ID, function);
                l.int(LINE_LINE, i64::from(line));
            });
        });
    }
    for &(id, name, file) in &function_list {
        out.message(PROFILE_FUNCTION, |m| {
            m.uint(FUNCTION_ID, id);
            m.int(FUNCTION_NAME, name);
            m.int(FUNCTION_SYSTEM_NAME, name);
            m.int(FUNCTION_FILENAME, file);
        });
    }
    out.int(PROFILE_TIME_NANOS, p.time_nanos);
    out.int(PROFILE_DURATION_NANOS, p.duration_nanos);
    if let Some(t) = &p.period_type {
        out.message(PROFILE_PERIOD_TYPE, |m| value_type(m, &mut strings, t));
    }
    out.int(PROFILE_PERIOD, p.period);
    let comments: Vec<u64> = p.comments.iter().map(|c| strings.index(c) as u64).collect();
    out.packed(PROFILE_COMMENT, comments.into_iter());
    if let Some(kind) = &p.default_sample_type {
        out.int(PROFILE_DEFAULT_SAMPLE_TYPE, strings.index(kind));
    }
    // Last, once every string is known. Each entry is written even when empty: the table's
    // first string must be "".
    for s in &strings.list {
        out.bytes(PROFILE_STRING_TABLE, s.as_bytes());
    }
    out.0
}

fn value_type(m: &mut Pb, strings: &mut Strings, t: &ValueType) {
    m.int(VALUE_TYPE_TYPE, strings.index(&t.kind));
    m.int(VALUE_TYPE_UNIT, strings.index(&t.unit));
}

/// profile.proto's string table: every string once, referred to by index, "" at 0.
struct Strings {
    index: HashMap<String, i64>,
    list: Vec<String>,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            index: HashMap::from([(String::new(), 0)]),
            list: vec![String::new()],
        }
    }
}

impl Strings {
    fn index(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// A protobuf message being written. Zero scalars are left out, as proto3 does.
#[derive(Default)]
struct Pb(Vec<u8>);

const WIRE_VARINT: u32 = 0;
const WIRE_LEN: u32 = 2;

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, WIRE_VARINT);
            self.varint(v);
        }
    }

    /// int64 is the two's complement varint: a negative value takes ten bytes.
    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, WIRE_LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn message(&mut self, field: u32, body: impl FnOnce(&mut Pb)) {
        let mut m = Pb::default();
        body(&mut m);
        self.bytes(field, &m.0);
    }

    /// A repeated scalar, packed (proto3's default; pprof reads packed and unpacked).
    fn packed(&mut self, field: u32, values: impl Iterator<Item = u64>) {
        let mut m = Pb::default();
        for v in values {
            m.varint(v);
        }
        if !m.0.is_empty() {
            self.bytes(field, &m.0);
        }
    }
}

/// The runtime's profile as a pprof heap profile, scaled as `runtime/pprof` scales it:
/// what `go tool pprof -sample_index=inuse_space` reads.
pub fn heap_allocations(profile: &HeapProfile, target: &Target) -> Profile {
    let samples = profile
        .buckets
        .iter()
        .map(|b| {
            let allocs = b.allocs + b.recent_allocs;
            let (ao, ab) = profile::scale(allocs, allocs * b.size, profile.rate);
            let live = b.allocs.saturating_sub(b.frees);
            let (io, ib) = profile::scale(live, live * b.size, profile.rate);
            Sample {
                stack: profile.frames(target, b),
                values: [ao, ab, io, ib].map(|v| v as i64).to_vec(),
                num_labels: vec![("bytes".into(), b.size as i64, "bytes".into())],
                ..Sample::default()
            }
        })
        .collect();
    Profile {
        sample_types: vec![
            ValueType::new("alloc_objects", "count"),
            ValueType::new("alloc_space", "bytes"),
            ValueType::new("inuse_objects", "count"),
            ValueType::new("inuse_space", "bytes"),
        ],
        samples,
        period_type: Some(ValueType::new("space", "bytes")),
        period: profile.rate as i64,
        default_sample_type: Some("inuse_space".into()),
        comments: vec![
            "the target's runtime heap profile, read from its memory by leaktrace".into(),
        ],
        ..Profile::default()
    }
}

/// The fallback sampler's allocations as a pprof profile (allocated objects and bytes; it
/// does not see frees).
pub fn sampled_allocations(
    target: &Target,
    samples: &Samples,
    classes: Option<&SizeClasses>,
) -> Profile {
    let samples = samples
        .stacks
        .iter()
        .map(|(key, stack, stat)| {
            let (objects, _) = sampler::objects_and_size(key, stat, classes);
            Sample {
                stack: sampler::sampled_frames(target, stack),
                values: vec![objects as i64, stat.bytes as i64],
                ..Sample::default()
            }
        })
        .collect();
    Profile {
        sample_types: vec![
            ValueType::new("alloc_objects", "count"),
            ValueType::new("alloc_space", "bytes"),
        ],
        samples,
        default_sample_type: Some("alloc_space".into()),
        comments: vec![
            "allocations sampled by leaktrace at span refills (a whole span each) and large allocations".into(),
        ],
        ..Profile::default()
    }
}

/// Every goroutine of a `dump`, by stack, as Go's own goroutine profile counts them
/// (`goroutine`/count), each stack labelled with its wait reason.
pub fn dump_goroutines(d: &Dump, time_nanos: i64) -> Profile {
    Profile {
        sample_types: vec![ValueType::new("goroutine", "count")],
        samples: d
            .goroutines
            .iter()
            .map(|g| Sample {
                stack: frames(&g.stack),
                values: vec![g.count as i64],
                labels: vec![("wait_reason".into(), g.wait_reason.clone())],
                num_labels: g
                    .waiting_seconds
                    .map(|w| vec![("waiting_max".into(), w.max as i64, "seconds".into())])
                    .unwrap_or_default(),
            })
            .collect(),
        period_type: Some(ValueType::new("goroutine", "count")),
        period: 1,
        time_nanos,
        comments: vec![format!(
            "every goroutine of PID {} ({}, {}), read by leaktrace dump",
            d.pid, d.executable, d.go_version
        )],
        ..Profile::default()
    }
}

/// A goroutine's shown stack as profile frames.
pub fn frames(stack: &[crate::census::StackFrame]) -> Vec<Frame> {
    stack
        .iter()
        .map(|f| Frame {
            function: f.function.to_string(),
            file: f.file.to_string(),
            line: f.line,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_spec() {
        // Examples from protobuf's encoding guide.
        let mut pb = Pb::default();
        pb.varint(1);
        pb.varint(150);
        pb.varint(300);
        assert_eq!(pb.0, [0x01, 0x96, 0x01, 0xac, 0x02]);
        let mut pb = Pb::default();
        pb.int(1, -1);
        assert_eq!(pb.0.len(), 1 + 10, "a negative int64 is ten bytes");
        assert_eq!(pb.0[0], 0x08);
        assert_eq!(pb.0[10], 0x01);
    }

    #[test]
    #[should_panic(expected = "pprof sample with 1 values for 2 sample types")]
    fn a_sample_needs_a_value_per_sample_type() {
        encode(&Profile {
            sample_types: vec![
                ValueType::new("inuse_objects", "count"),
                ValueType::new("inuse_space", "bytes"),
            ],
            samples: vec![Sample {
                values: vec![1],
                ..Default::default()
            }],
            ..Default::default()
        });
    }

    #[test]
    fn strings_functions_and_locations_are_written_once() {
        let frame = |function: &str, line| Frame {
            function: function.to_string(),
            file: "/src/main.go".to_string(),
            line,
        };
        let sample = |stack: Vec<Frame>| Sample {
            stack,
            values: vec![1],
            ..Default::default()
        };
        let p = Profile {
            sample_types: vec![ValueType::new("goroutine", "count")],
            samples: vec![
                sample(vec![frame("main.a", 10), frame("main.main", 5)]),
                sample(vec![frame("main.a", 11), frame("main.main", 5)]),
            ],
            ..Default::default()
        };
        let raw = encode_raw(&p);
        let fields = top_level_fields(&raw);
        let count = |field| fields.iter().filter(|(f, _)| *f == field).count();
        assert_eq!(count(PROFILE_FUNCTION), 2, "main.a and main.main");
        assert_eq!(
            count(PROFILE_LOCATION),
            3,
            "main.a:10, main.a:11, main.main:5"
        );
        let strings: Vec<&[u8]> = fields
            .iter()
            .filter(|(f, _)| *f == PROFILE_STRING_TABLE)
            .map(|(_, b)| *b)
            .collect();
        assert_eq!(
            strings,
            [
                &b""[..],
                b"goroutine",
                b"count",
                b"main.a",
                b"/src/main.go",
                b"main.main"
            ]
        );
    }

    /// The length-delimited fields of a message, in order: (field number, bytes).
    fn top_level_fields(mut b: &[u8]) -> Vec<(u32, &[u8])> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0;
            for shift in (0..64).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut fields = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            match key as u32 & 7 {
                WIRE_VARINT => {
                    varint(&mut b);
                }
                WIRE_LEN => {
                    let len = varint(&mut b) as usize;
                    fields.push(((key >> 3) as u32, &b[..len]));
                    b = &b[len..];
                }
                wire => panic!("wire type {wire} is not written"),
            }
        }
        fields
    }
}
