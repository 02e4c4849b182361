#!/bin/sh
# VM create-to-running latency through godwitd against godwit run, and
# godwitd's memory with 30 tiny VMs (bench/daemonlat; RESULTS.md there).
# Extra arguments go to bench/daemonlat: -runs N, -vms N, and
# -base-godwit/-base-godwitd to measure another build's binaries in the
# same run (taking turns with these), for a before/after comparison.
set -e
cd "$(dirname "$0")/.."
mkdir -p bin
# As make build links godwit: statically (bench/boot/RESULTS.md).
CGO_ENABLED=0 go build -o bin/godwit ./cmd/godwit
go build -o bin/godwitd ./cmd/godwitd
go run ./bench/daemonlat -godwit "$PWD/bin/godwit" -godwitd "$PWD/bin/godwitd" "$@"
