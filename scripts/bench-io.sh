#!/bin/bash
# bench-io.sh [bench-io flags]: godwit's virtio-blk/virtio-net against QEMU's
# on the same kernel, image and bridge, in the nested harness (fast KVM, root).
# Prints a Markdown table of medians. Example: scripts/bench-io.sh -runs 5
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
make -s build
go build -o bin/bench-io ./bench/io
CGO_ENABLED=0 go build -o bin/iobench-guest ./bench/io/guest
exec bin/godwit-nested bin/bench-io "$@"
