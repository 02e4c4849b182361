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
# The image goes on L1's tmpfs: L1's /tmp is the host's disk over 9p, which
# would measure 9p instead of the VMMs.
exec bin/godwit-nested env TMPDIR=/dev/shm bin/bench-io "$@"
