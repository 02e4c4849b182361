#!/usr/bin/env bash
# make bench-snapshot: snapshot and restore benchmark of godwit (Go API:
# full and diff snapshots, restore in copy and mmap modes) against QEMU
# (stop + migrate to a file, -incoming + cont) (bench/snapshot).
#
# Linux guests need fast KVM: where this host's /dev/kvm is slow (a PVM
# host) or missing, the whole benchmark runs inside ONE nested-harness L1,
# so both VMMs pay the same L1; snapshot files go to L1's /dev/shm (tmpfs).
#
# Environment: BENCH_RUNS (default 5), BENCH_SIZES (default 256M,1G),
# BENCH_ARGS (extra bench-snapshot flags), GODWIT_NESTED_MEM (L1 memory in
# MiB; default here 7168: a 1 GiB guest, its restores, the snapshot files
# on /dev/shm and the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
RUNS=${BENCH_RUNS:-5}
SIZES=${BENCH_SIZES:-256M,1G}

go build -o "$BIN/bench-snapshot" ./bench/snapshot
[ -x "$BIN/godwit-nested" ] || go build -o "$BIN/godwit-nested" ./cmd/godwit-nested

if "$BIN/godwit-nested" -check-fast >/dev/null 2>&1; then
  echo "bench-snapshot: /dev/kvm is fast here: running directly" >&2
  exec "$BIN/bench-snapshot" -runs "$RUNS" -sizes "$SIZES" ${BENCH_ARGS:-}
fi

echo "bench-snapshot: inside one nested-harness L1 ($("$BIN/godwit-nested" -check-fast 2>&1 || true))" >&2
export GODWIT_NESTED_MEM=${GODWIT_NESTED_MEM:-7168}
exec "$BIN/godwit-nested" -- "$BIN/bench-snapshot" -runs "$RUNS" -sizes "$SIZES" ${BENCH_ARGS:-}
