package vmm_test

// In-guest tests of the virtio devices on the PCI bus: disks found by
// serial, NICs found by MAC, the RNG, seen from a Linux guest and checked
// from the host side.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/vmm"
)

const ioGuestMemory = 512 << 20

// requirePowerOff fails the test unless the guest powered off after its
// commands exited with status 0.
func requirePowerOff(t *testing.T, exit vmm.Exit, out string) {
	t.Helper()
	if exit.Reason != vmm.ExitPowerOff {
		t.Fatalf("exit %v (%v), want poweroff; console:\n%s", exit.Reason, exit.Err, out)
	}
	if !strings.Contains(out, "GODWIT-INIT-EXIT=0") {
		t.Fatalf("guest commands failed; console:\n%s", out)
	}
}

// guestValue returns the value the guest printed as "KEY=value".
func guestValue(t *testing.T, out, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `=(\S*)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("guest printed no %s=; console:\n%s", key, out)
	}
	return m[1]
}

// mkExt4 builds an ext4 image of size MiB at path holding files, without
// root (mkfs.ext4 -d).
func mkExt4(t *testing.T, path string, mib int, files map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 (e2fsprogs) not installed")
	}
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
		"-d", dir, path, strconv.Itoa(mib)+"M")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
}

// debugfsDump extracts file from an ext4 image with debugfs (no root, no
// mount) and returns its SHA-256.
func debugfsDump(t *testing.T, img, file string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "dump")
	cmd := exec.Command("debugfs", "-R", "dump "+file+" "+out, img)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debugfs dump %s: %v\n%s", file, err, b)
	}
	return fileSHA256(t, out)
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// findDisk is guest shell that sets a variable to the /dev node of the
// virtio disk with a serial: dev VAR SERIAL.
const findDisk = `
dev() {
	for d in /sys/block/vd*; do
		if [ "$(cat $d/serial 2>/dev/null)" = "$2" ]; then eval "$1=/dev/${d##*/}"; return 0; fi
	done
	echo "no disk with serial $2" >&2; return 1
}
`

func TestLinuxDisks(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data.img")
	ro := filepath.Join(dir, "ro.img")
	base := filepath.Join(dir, "base.img")
	overlay := filepath.Join(dir, "overlay.qcow2")
	mkExt4(t, data, 96, nil)
	mkExt4(t, ro, 16, map[string]string{"hello": "read-only-disk"})
	mkExt4(t, base, 32, map[string]string{"hello": "from-the-base"})
	if err := os.Chmod(base, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := disk.Overlay(base, overlay); err != nil {
		t.Fatalf("overlay: %v", err)
	}
	roSum, baseSum := fileSHA256(t, ro), fileSHA256(t, base)

	// The disks are listed in a different order than the guest looks
	// for them: it must go by serial.
	cfg := vmm.Config{Memory: ioGuestMemory, Disks: []vmm.DiskConfig{
		{Path: overlay, Serial: "ovl0"},
		{Path: ro, ReadOnly: true, Serial: "ro0", Format: "raw"},
		{Path: data, Serial: "data0"},
	}}
	exit, out := bootLinux(t, cfg, findDisk+`
set -e
dev D data0; dev R ro0; dev O ovl0
echo "RO=$(cat /sys/block/${R#/dev/}/ro)$(cat /sys/block/${D#/dev/}/ro)"
mkdir -p /mnt/d /mnt/r /mnt/o
mount -t ext4 $D /mnt/d
dd if=/dev/urandom of=/mnt/d/f bs=1M count=64 2>/dev/null
echo "SUM=$(sha256sum /mnt/d/f | cut -d' ' -f1)"
sync; umount /mnt/d
mount -t ext4 -o ro,noload $R /mnt/r
echo "ROFILE=$(cat /mnt/r/hello)"
umount /mnt/r
if dd if=/dev/zero of=$R bs=4096 count=1 conv=fsync 2>/dev/null; then echo "ROWRITE=accepted"; else echo "ROWRITE=refused"; fi
mount -t ext4 $O /mnt/o
echo "BASEFILE=$(cat /mnt/o/hello)"
dd if=/dev/urandom of=/mnt/o/g bs=1M count=8 2>/dev/null
echo "OSUM=$(sha256sum /mnt/o/g | cut -d' ' -f1)"
sync; umount /mnt/o
`)
	requirePowerOff(t, exit, out)
	if got := guestValue(t, out, "RO"); got != "10" {
		t.Errorf("guest sees ro flags %q for the ro and data disks, want \"10\"", got)
	}
	if got := guestValue(t, out, "ROFILE"); got != "read-only-disk" {
		t.Errorf("read-only disk file reads %q", got)
	}
	if got := guestValue(t, out, "ROWRITE"); got != "refused" {
		t.Errorf("write to the read-only disk was %s", got)
	}
	if got := guestValue(t, out, "BASEFILE"); got != "from-the-base" {
		t.Errorf("overlay shows base file as %q", got)
	}
	if got, want := debugfsDump(t, data, "/f"), guestValue(t, out, "SUM"); got != want {
		t.Errorf("64 MiB file in the image has SHA-256 %s, the guest wrote %s", got, want)
	}
	if got := fileSHA256(t, ro); got != roSum {
		t.Errorf("read-only image changed")
	}
	if got := fileSHA256(t, base); got != baseSum {
		t.Errorf("overlay's base image changed")
	}
	flat := filepath.Join(dir, "flat.img")
	if err := disk.Convert(overlay, flat, disk.ConvertOptions{Format: "raw"}, nil); err != nil {
		t.Fatalf("convert overlay: %v", err)
	}
	if got, want := debugfsDump(t, flat, "/g"), guestValue(t, out, "OSUM"); got != want {
		t.Errorf("file written through the overlay has SHA-256 %s, the guest wrote %s", got, want)
	}
	if st, err := os.Stat(overlay); err != nil || st.Size() < 8<<20 {
		t.Errorf("overlay does not hold the 8 MiB written (%v, %v)", st.Size(), err)
	}
}

func TestLinuxRNG(t *testing.T) {
	exit, out := bootLinux(t, vmm.Config{Memory: ioGuestMemory, RNG: true}, `
set -e
echo "RNGDEV=$(cat /sys/devices/virtual/misc/hw_random/rng_current)"
echo "RNG=$(head -c 4096 /dev/hwrng | wc -c)"
echo "RNGHEX=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
`)
	requirePowerOff(t, exit, out)
	if got := guestValue(t, out, "RNGDEV"); !strings.HasPrefix(got, "virtio_rng") {
		t.Errorf("current hw_random device %q, want virtio_rng", got)
	}
	if got := guestValue(t, out, "RNG"); got != "4096" {
		t.Fatalf("guest read %s bytes from /dev/hwrng, want 4096", got)
	}
	hx := guestValue(t, out, "RNGHEX")
	if b, err := hex.DecodeString(hx); err != nil || len(b) != 32 || bytes.Count(b, []byte{0}) > 8 {
		t.Errorf("hwrng bytes %q do not look random", hx)
	}
}
