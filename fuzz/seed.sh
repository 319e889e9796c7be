#!/usr/bin/env bash
# Writes the seed corpus of the fuzz targets, fuzz/corpus/<target>/, from real Go binaries:
# `package main; func main() {}` built with the Go toolchains of scripts/versions.sh (installed
# by scripts/setup.sh), its sections cut out with objcopy. The output is committed; run this
# again after adding a Go version or changing a target's input format. Builds use -trimpath
# and no VCS stamp, so the same toolchains write the same bytes.
#
# The whole corpus is kept small (about 2.5 MB) because each seed is a whole section or file:
#   buildinfo/     .go.buildinfo of each version, plus PIE and -s -w builds
#   pclntab/       the target's input format: text_start (u64 LE), minor version (u8), section
#                  length (u32 LE), .gopclntab, then the bytes at go:func.* (inline trees) to
#                  the end of their section
#   elf/           one whole stripped executable (-ldflags=-s -w)
#   dwarf_layout/  executables reduced to what the layout reads (code, pclntab and the DWARF
#                  sections leaktrace does not load removed): one with DWARF decompressed, so
#                  the fuzzer can mutate it, and one objcopy --only-keep-debug file, compressed
#                  as Go writes it and without .symtab (wait reasons then come from the table)
#   record/        48-byte ring-buffer records (leaktrace-common's Record), alone and in
#                  sequences
# Regression seeds (crash inputs fixed since) live beside these, named regression-*, and are
# left alone by this script:
#   dwarf_layout/regression-member-offset-overflow: DWARF whose runtime.g.stack member sits at
#     offset 2^64-8, so that adding stack.lo's offset overflowed (target/layout.rs, field)
#   dwarf_layout/regression-wait-reasons-wrap-address-space: runtime.waitReasonStrings at the
#     top of the address space, in a PT_LOAD whose file bytes run past 2^64, so that a slot's
#     address overflowed (target/layout.rs, wait_reason_strings)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/versions.sh
source "$here/scripts/versions.sh"
corpus="$here/fuzz/corpus"

export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod GOTELEMETRY=off CGO_ENABLED=0
export GOCACHE="$LEAKTRACE_CACHE/gocache" GOPATH="$LEAKTRACE_CACHE/gopath"

step() { printf '[seed] %s\n' "$*"; }
fail() { printf '[seed] FAILED: %s\n' "$*" >&2; exit 1; }
command -v objcopy >/dev/null || fail "objcopy not found (Debian package binutils)"
command -v python3 >/dev/null || fail "python3 not found"

oldest=${GO_VERSIONS%% *}
newest=${GO_VERSIONS##* }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
printf 'module fuzzseed\n\ngo 1.21\n' >"$work/src/go.mod"
printf 'package main\n\nfunc main() {}\n' >"$work/src/main.go"

# build VERSION OUT [go build flags...]
build() {
  local v=$1 out=$2
  shift 2
  local go="$LEAKTRACE_CACHE/go/$v/go/bin/go"
  [ -x "$go" ] || fail "Go $v not found at $go; run scripts/setup.sh"
  (cd "$work/src" && "$go" build -trimpath -buildvcs=false -o "$out" "$@" .) \
    || fail "go $v build $* failed"
}

# (The readers below consume all their input: one that stops early would kill the writer with
# SIGPIPE, which pipefail reports as a failure.)
# section_field FILE SECTION FIELD: the section's address (FIELD=addr) or size (FIELD=size),
# in hex, from readelf.
section_field() {
  readelf -SW "$1" | sed -n 's/^ *\[ *[0-9]*\] *//p' | awk -v name="$2" -v field="$3" '
    $1 == name && !found { print (field == "addr" ? $3 : $5); found = 1 }'
}

# section_holding FILE ADDR: the name of the section whose address range holds ADDR (hex).
section_holding() {
  readelf -SW "$1" | sed -n 's/^ *\[ *[0-9]*\] *//p' | python3 -c '
import sys
want = int(sys.argv[1], 16)
for line in sys.stdin.read().splitlines():
    f = line.split()
    if len(f) < 5 or f[1] == "NOBITS":
        continue
    try:
        addr, size = int(f[2], 16), int(f[4], 16)
    except ValueError:
        continue
    if addr and addr <= want < addr + size:
        print(f[0])
        break
' "$2"
}

rm -rf "$corpus"/{buildinfo,pclntab,elf,dwarf_layout,record}/seed-*
mkdir -p "$corpus"/{buildinfo,pclntab,elf,dwarf_layout,record}

step "building the seed program with Go $GO_VERSIONS"
for v in $GO_VERSIONS; do
  build "$v" "$work/go$v"
  objcopy --dump-section .go.buildinfo="$corpus/buildinfo/seed-go$v" "$work/go$v" /dev/null
done
build "$oldest" "$work/go$oldest-pie" -buildmode=pie
objcopy --dump-section .go.buildinfo="$corpus/buildinfo/seed-go$oldest-pie" "$work/go$oldest-pie" /dev/null
build "$newest" "$work/go$newest-pie-stripped" -buildmode=pie -ldflags='-s -w'
objcopy --dump-section .go.buildinfo="$corpus/buildinfo/seed-go$newest-pie-stripped" \
  "$work/go$newest-pie-stripped" /dev/null

step "pclntab: .gopclntab and go:func.* of Go $oldest"
bin="$work/go$oldest"
objcopy --dump-section .gopclntab="$work/pclntab" "$bin" /dev/null
text_start=$(section_field "$bin" .text addr)
gofunc=$(nm "$bin" | awk '$3 == "go:func.*" && !found { print $1; found = 1 }')
[ -n "$gofunc" ] || fail "no go:func.* symbol in $bin"
holder=$(section_holding "$bin" "$gofunc")
[ -n "$holder" ] || fail "go:func.* at 0x$gofunc is in no section of $bin"
objcopy --dump-section "$holder=$work/gofunc-section" "$bin" /dev/null
python3 - "$corpus/pclntab/seed-go$oldest" "$text_start" "${oldest#1.}" "$work/pclntab" \
  "$work/gofunc-section" "$(section_field "$bin" "$holder" addr)" "$gofunc" <<'EOF'
import struct, sys
out, text_start, version, pclntab, holder, holder_addr, gofunc = sys.argv[1:]
minor = int(version.split(".")[0])
table = open(pclntab, "rb").read()
tail = open(holder, "rb").read()[int(gofunc, 16) - int(holder_addr, 16):]
with open(out, "wb") as f:
    f.write(struct.pack("<QBI", int(text_start, 16), minor, len(table)))
    f.write(table)
    f.write(tail)
EOF

step "elf: Go $oldest, stripped"
build "$oldest" "$corpus/elf/seed-go$oldest-stripped" -ldflags='-s -w'

step "dwarf_layout: Go $newest with DWARF decompressed, Go $oldest DWARF alone"
# Sections leaktrace's layout never reads: code, the runtime's tables, and DWARF other than
# .debug_info, .debug_abbrev, .debug_line (gimli parses the line program header of each
# unit) and .debug_addr.
unread_debug=(-R .debug_frame -R .debug_loc -R .debug_loclists -R .debug_ranges
  -R .debug_rnglists -R .debug_gdb_scripts)
objcopy -R .text -R .gopclntab -R .go.type -R .go.func "${unread_debug[@]}" \
  --decompress-debug-sections "$work/go$newest" "$corpus/dwarf_layout/seed-go$newest-decompressed"
# -N '*' drops every symbol, and with them .symtab (objcopy rebuilds it from its symbol list
# whatever -R says).
objcopy --only-keep-debug "${unread_debug[@]}" -w -N '*' \
  "$work/go$oldest" "$corpus/dwarf_layout/seed-go$oldest-debug-only"

step "record: park, wake, re-entry, lifecycle, channel and unknown-kind records"
python3 - "$corpus/record" <<'EOF'
import struct, sys
# leaktrace-common's Record: ts_ns, goid, other_goid, addr, pc (u64), tid (u32), kind, reason
# (u8), 2 bytes of padding. RecordKind: Park = 1, Wake, Create, Exit, ChanSend, ChanRecv,
# ChanClose, Select = 8.
def record(ts, goid, kind, reason=0, other=0, addr=0, pc=0, tid=4242):
    return struct.pack("<QQQQQIBB2x", ts, goid, other, addr, pc, tid, kind, reason)
PARK, WAKE, CREATE, EXIT, CHAN_SEND, CHAN_RECV, CHAN_CLOSE, SELECT = range(1, 9)
seeds = {
    "park": record(1000, 7, PARK, reason=14, addr=0xc000012000, pc=0x4377a5),
    "wake": record(2000, 7, WAKE, other=1),
    "unknown-kind": record(3000, 7, 9),
    "park-wake": record(1000, 7, PARK, reason=14, addr=0xc000012000, pc=0x4377a5)
    + record(2000, 7, WAKE, other=1),
    # gopark's entry probe firing twice (morestack), then a wake of a goroutine never seen
    # parking, and a short tail.
    "reentry-unseen-tail": record(1000, 7, PARK, reason=14, pc=0x4377a5)
    + record(1001, 7, PARK, reason=14, pc=0x4377a5)
    + record(1500, 9, WAKE)
    + b"\x01\x02\x03",
    # A goroutine's whole life: created by goroutine 1, parks in a blocking receive, is woken
    # by a close, exits.
    "lifecycle": record(500, 8, CREATE, other=1, addr=0x4a1b20, pc=0x4a1c05)
    + record(600, 8, CHAN_RECV, reason=1, addr=0xc000020060, pc=0x4a1b4d)
    + record(601, 8, PARK, reason=2, addr=0xc000020060, pc=0x4a1b4d)
    + record(700, 1, CHAN_CLOSE, addr=0xc000020060, pc=0x4a1c40)
    + record(701, 8, WAKE, other=1)
    + record(800, 8, EXIT),
    "chan-select": record(900, 3, CHAN_SEND, reason=1, addr=0xc000020060, pc=0x4a1b4d)
    + record(901, 3, SELECT, reason=2, pc=0x4a1b80),
}
for name, data in seeds.items():
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(data)
EOF

du -sh "$corpus"
for t in buildinfo pclntab elf dwarf_layout record; do
  step "$t: $(find "$corpus/$t" -type f | wc -l) files, $(du -sk "$corpus/$t" | cut -f1) KiB"
done
