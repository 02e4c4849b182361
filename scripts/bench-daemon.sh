#!/usr/bin/env bash
# make bench-daemon: godwit vm export + import throughput of a 4 GiB disk
# holding 1 GiB of data against qemu-img convert -c -O qcow2 + tar
# (bench/daemon). Disk I/O on this host; no VM, no nested harness.
# Files go to /dev/shm when it has room, else /tmp.
# Environment: BENCH_RUNS (default 3), BENCH_ARGS (extra flags).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
go build -o "$BIN/bench-daemon" ./bench/daemon
exec "$BIN/bench-daemon" -runs "${BENCH_RUNS:-3}" ${BENCH_ARGS:-} "$@"
