#!/bin/sh
# TCP throughput through godwit's --net user, godwit's TAP backend and
# QEMU's -netdev user, side by side, in the nested harness's L1 (where KVM
# is fast). Prints the table; GODWIT_BENCH_OUT=FILE also writes it there.
set -eu
cd "$(dirname "$0")/.."
[ -x bin/godwit-nested ] || make build
go test -c -o /tmp/usernet-bench.test ./bench/usernet
exec bin/godwit-nested -- env GODWIT_BENCH_USERNET=1 GODWIT_BENCH_MIB="${GODWIT_BENCH_MIB:-64}" GODWIT_BENCH_OUT="${GODWIT_BENCH_OUT:-}" /tmp/usernet-bench.test -test.v -test.run TestUserNetThroughput -test.timeout 20m
