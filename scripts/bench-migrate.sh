#!/usr/bin/env bash
# make bench-migrate: live-migration benchmark of godwit (Go API: vm.Migrate
# to a vmm.Receive over a unix socket) against QEMU (migrate to a second
# QEMU with -incoming unix:...), same downtime limit and bandwidth cap: an
# idle 1 GiB guest and one dirtying ~50 MB/s (bench/migrate).
#
# Linux guests need fast KVM: where this host's /dev/kvm is slow (a PVM
# host) or missing, the whole benchmark runs inside ONE nested-harness L1,
# so both VMMs pay the same L1.
#
# Environment: BENCH_RUNS (default 5), BENCH_ARGS (extra bench-migrate
# flags: -mem, -workloads, -downtime, -bandwidth, ...), GODWIT_NESTED_MEM
# (L1 memory in MiB; default here 6144: a 1 GiB source and a 1 GiB
# destination side by side, and the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
RUNS=${BENCH_RUNS:-5}

go build -o "$BIN/bench-migrate" ./bench/migrate
[ -x "$BIN/godwit-nested" ] || go build -o "$BIN/godwit-nested" ./cmd/godwit-nested

if "$BIN/godwit-nested" -check-fast >/dev/null 2>&1; then
  echo "bench-migrate: /dev/kvm is fast here: running directly" >&2
  exec "$BIN/bench-migrate" -runs "$RUNS" ${BENCH_ARGS:-}
fi

echo "bench-migrate: inside one nested-harness L1 ($("$BIN/godwit-nested" -check-fast 2>&1 || true))" >&2
export GODWIT_NESTED_MEM=${GODWIT_NESTED_MEM:-6144}
exec "$BIN/godwit-nested" -- "$BIN/bench-migrate" -runs "$RUNS" ${BENCH_ARGS:-}
