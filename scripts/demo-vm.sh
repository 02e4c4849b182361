#!/usr/bin/env bash
# demo-vm.sh GODWIT KERNEL INITRD PORT: serve a greeting over HTTP on this
# machine's loopback (busybox httpd), then boot the demo guest with
# user-mode networking (no TAP, no root needed); the guest fetches the
# greeting through the NAT gateway at 10.0.2.2. Run by scripts/demo.sh,
# directly or inside the nested harness.
set -euo pipefail
godwit=$1 kernel=$2 initrd=$3 port=$4
www=$(mktemp -d)
trap 'kill $httpd 2>/dev/null || true; rm -rf "$www"' EXIT
echo "Hello from the host, fetched over godwit's user-mode network" > "$www/hello.txt"
busybox httpd -f -p "127.0.0.1:$port" -h "$www" &
httpd=$!
"$godwit" run --kernel "$kernel" --initrd "$initrd" --cpus 2 --memory 512M \
  --net user --cmdline "console=ttyS0 quiet panic=-1" </dev/null
