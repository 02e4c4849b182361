#!/bin/sh
# Regenerates ztypes_linux_amd64.go from <linux/kvm.h> (run by `go generate`
# in this directory; needs gcc and the kernel headers). cgo's scratch files
# go to a temporary directory so that nothing is left in the tree.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
go tool cgo -godefs -objdir "$d" types_linux.go >"$d/raw.go"
go run mkztypes.go <"$d/raw.go" >"$d/ztypes.go"
mv "$d/ztypes.go" ztypes_linux_amd64.go
