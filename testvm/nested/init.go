package nested

// l1Init is /init of the L1 initramfs (busybox sh). It loads the modules
// listed in /lib/modules/order, finds the three virtio-serial ports the
// host listens on, mounts the host root read-only over 9p under a tmpfs
// overlay, mounts the run's control folder and the shared folders, runs
// /run/godwit/run.sh in a chroot with stdout and stderr on the ports,
// writes the end marker to both, reports "exit N" on the status port and
// powers off once the host acknowledges. Failures before the command runs
// are reported as "error MESSAGE".
const l1Init = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "godwit-l1: $*"; }
fail() {
	say "$*"
	if [ -n "$ST" ]; then echo "error $*" >&5; read -r ack <&5; fi
	poweroff -f
}
skip=kvm_intel
grep -q GenuineIntel /proc/cpuinfo && skip=kvm_amd
for m in $(cat /lib/modules/order); do
	[ $m = $skip ] || insmod /lib/modules/$m.ko || say "insmod $m failed"
done

# The host's sockets are virtio-serial ports named godwit.*.
n=0
while :; do
	for p in /sys/class/virtio-ports/*; do
		[ -r "$p/name" ] || continue
		d=${p##*/}
		[ -c /dev/$d ] || continue
		case "$(cat $p/name)" in
		godwit.stdout) OUT=$d ;;
		godwit.stderr) ERR=$d ;;
		godwit.status) STP=$d ;;
		esac
	done
	[ -n "$OUT" ] && [ -n "$ERR" ] && [ -n "$STP" ] && break
	n=$((n+1))
	[ $n -gt 3000 ] && fail "virtio-serial ports did not appear"
	sleep 0.01
done
exec 5<>/dev/$STP
ST=1

mkdir -p /lower /rw /host /ctl
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || fail "cannot mount the host root over 9p"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 godwitctl /ctl || fail "cannot mount the control folder over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work || fail "cannot mount tmpfs"
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /host || fail "cannot mount the overlay on the host root"
while read -r tag dir; do
	mkdir -p "/host$dir"
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "$tag" "/host$dir" || fail "cannot mount shared folder $dir"
done < /ctl/shares
mount -t proc proc /host/proc || fail "cannot mount /proc"
mount -t sysfs sysfs /host/sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs /host/dev || fail "cannot mount /dev"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /host/dev/pts || fail "cannot mount /dev/pts"
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /host/run || fail "cannot mount /run"
mkdir -p /host/run/godwit && mount --bind /ctl /host/run/godwit || fail "cannot bind the control folder"
[ -d /host/sys/fs/cgroup ] && mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
ip link set lo up
NONCE=$(cat /ctl/nonce)

exec 3>/dev/$OUT 4>/dev/$ERR
chroot /host /bin/sh /run/godwit/run.sh </dev/null >&3 2>&4 3>&- 4>&- 5>&-
rc=$?
printf %s "$NONCE" >&3
printf %s "$NONCE" >&4
echo "exit $rc" >&5
read -r ack <&5
poweroff -f
`
