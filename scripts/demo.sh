#!/usr/bin/env bash
# make demo: boot a Linux guest under godwit and run a command in it.
# Downloads Debian's cloud kernel once (apt-get download, cached in
# ~/.cache/godwit), builds a busybox initramfs, and boots it. Where this
# host's /dev/kvm is slow (a PVM host) or missing, the boot runs inside the
# nested harness (QEMU/TCG L1 with nested KVM), and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin

need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
missing=""
need qemu-system-x86_64 qemu-system-x86
[ -x /bin/busybox ] || missing="$missing busybox-static"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "demo: installing$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "demo: please install:$missing (apt-get install$missing)" >&2
    exit 1
  fi
fi

go build -o "$BIN/godwit-testguest" ./testvm/cmd/godwit-testguest
PORT=$((20000 + RANDOM % 20000))
# The guest: report what it sees, get an address by DHCP from godwit's
# user-mode network, and fetch a file from an HTTP server on the host.
GUEST_CMD=$(cat <<GUEST
mkdir -p /tmp
printf '#!/bin/sh\n[ "\$1" = bound ] || exit 0\nip addr add \$ip/\$mask dev \$interface\nip route add default via \$router\n' > /tmp/dhcp.sh
chmod +x /tmp/dhcp.sh
ip link set eth0 up
udhcpc -i eth0 -q -n -s /tmp/dhcp.sh >/dev/null 2>&1
echo
echo "=== inside the guest ==="
echo "kernel:  \$(uname -sr)"
echo "vCPUs:   \$(grep -c ^processor /proc/cpuinfo)"
echo "memory:  \$(awk '/MemTotal/{print int(\$2/1024)}' /proc/meminfo) MiB"
echo "network: \$(ip -4 addr show eth0 | awk '/inet /{print \$2}') (DHCP from godwit --net user)"
echo "fetched: \$(printf 'GET /hello.txt HTTP/1.0\r\n\r\n' | nc 10.0.2.2 $PORT | tail -n 1)"
echo "uptime:  \$(cut -d' ' -f1 /proc/uptime) s"
echo "======================"
GUEST
)
eval "$("$BIN/godwit-testguest" -commands "$GUEST_CMD")"

status=0
if "$BIN/godwit-nested" -check-fast >/dev/null 2>&1; then
  echo "demo: /dev/kvm is fast here: booting directly"
  ./scripts/demo-vm.sh "$BIN/godwit" "$KERNEL" "$INITRD" "$PORT" || status=$?
else
  echo "demo: $("$BIN/godwit-nested" -check-fast || true)"
  echo "demo: booting inside the nested harness (QEMU L1 with nested KVM; adds ~5 s)"
  "$BIN/godwit-nested" -- ./scripts/demo-vm.sh "$BIN/godwit" "$KERNEL" "$INITRD" "$PORT" || status=$?
fi
echo "demo: the guest powered off; godwit exited with status $status"
exit $status
