#!/bin/sh
# VM create-to-running latency through godwitd against godwit run, and
# godwitd's memory with 30 tiny VMs (bench/daemonlat; RESULTS.md there).
set -e
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/godwit ./cmd/godwit
go build -o bin/godwitd ./cmd/godwitd
go run ./bench/daemonlat -godwit "$PWD/bin/godwit" -godwitd "$PWD/bin/godwitd" "$@"
