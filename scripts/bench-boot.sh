#!/usr/bin/env bash
# make bench-boot: boot-to-init, setup-time and memory-overhead benchmark of
# godwit against QEMU (-M pc, -M microvm) and gokvm (bench/boot).
#
# Linux guests need fast KVM: where this host's /dev/kvm is slow (a PVM
# host) or missing, the whole benchmark runs inside ONE nested-harness L1
# (so every VMM pays the same L1), and godwit's setup time is also measured
# on this host's /dev/kvm directly (no guest code runs for that).
#
# Environment: BENCH_RUNS (default 5), BENCH_SETUP_RUNS (default 20),
# BENCH_ARGS (extra bench-boot flags), GOKVM (a gokvm binary; default: built
# from the pinned version into a temporary module under /tmp, never our
# go.mod; set GOKVM=none to skip it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
RUNS=${BENCH_RUNS:-5}
SETUP_RUNS=${BENCH_SETUP_RUNS:-20}
GOKVM_VERSION=v0.0.8-0.20231003020000-f53faca69d28

go build -o "$BIN/bench-boot" ./bench/boot

if [ -z "${GOKVM:-}" ]; then
  GOKVM=/tmp/godwit-gokvm-$GOKVM_VERSION/bin/gokvm
  if [ ! -x "$GOKVM" ]; then
    dir=$(dirname "$(dirname "$GOKVM")")
    mkdir -p "$dir"
    ( cd "$dir" && { [ -f go.mod ] || go mod init gokvmbench >/dev/null 2>&1; } &&
      GOFLAGS=-mod=mod GOBIN="$dir/bin" go install "github.com/bobuhiro11/gokvm@$GOKVM_VERSION" ) ||
      { echo "bench-boot: could not build gokvm; skipping it" >&2; GOKVM=none; }
  fi
fi
gokvm_args=()
[ "$GOKVM" != none ] && gokvm_args=(-gokvm "$GOKVM")

if "$BIN/godwit-nested" -check-fast >/dev/null 2>&1; then
  echo "bench-boot: /dev/kvm is fast here: running directly" >&2
  exec "$BIN/bench-boot" -runs "$RUNS" -setup-runs "$SETUP_RUNS" "${gokvm_args[@]}" ${BENCH_ARGS:-}
fi

echo "bench-boot: setup time on this host's /dev/kvm (no guest code runs)" >&2
"$BIN/bench-boot" -only setup -setup-runs "$SETUP_RUNS" ${BENCH_ARGS:-}
echo
echo "bench-boot: everything else inside one nested-harness L1 ($("$BIN/godwit-nested" -check-fast 2>&1 || true))" >&2
exec "$BIN/godwit-nested" -- "$BIN/bench-boot" -runs "$RUNS" -setup-runs "$SETUP_RUNS" "${gokvm_args[@]}" ${BENCH_ARGS:-}
