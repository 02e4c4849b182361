package testvm

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// InitMarker is the line the default /init prints once modules are loaded,
// before it runs the caller's commands.
const InitMarker = "GODWIT-INIT-OK"

// DefaultBusybox is where Debian's busybox-static package puts its binary.
const DefaultBusybox = "/bin/busybox"

// File is an extra file placed in an initramfs.
type File struct {
	// Path inside the initramfs, e.g. /etc/motd (parents are created).
	Path string
	Data []byte
	// Mode holds the permission bits; 0 means 0644.
	Mode os.FileMode
}

// InitramfsOptions describes an initramfs for a Linux test guest.
type InitramfsOptions struct {
	// Busybox is a statically linked busybox binary; empty means
	// DefaultBusybox. It is installed as /bin/busybox and the default
	// /init makes the applet links.
	Busybox string
	// Modules are copied, decompressed, to /lib/modules/NAME.ko and the
	// default /init loads them in this order (use Kernel.ResolveModules or
	// Kernel.Modules, which are dependency-ordered).
	Modules []Module
	// Files are extra files.
	Files []File
	// Commands is shell text the default /init runs (in a subshell, with
	// /proc, /sys and /dev mounted and the modules loaded) after printing
	// InitMarker. The default init then prints "GODWIT-INIT-EXIT=<status>"
	// and powers off with `poweroff -f`.
	Commands string
	// Init, when set, replaces the default /init script entirely.
	Init string
	// Gzip compresses the archive (the Debian kernels have RD_GZIP).
	Gzip bool
}

// DefaultInit returns the /init script the options produce when Init is
// empty.
func (o InitramfsOptions) DefaultInit() string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
`)
	for _, m := range o.Modules {
		fmt.Fprintf(&b, "insmod /lib/modules/%s.ko || echo 'godwit-init: insmod %s failed'\n", m.Name, m.Name)
	}
	b.WriteString("echo " + InitMarker + "\n(\n")
	if strings.TrimSpace(o.Commands) == "" {
		b.WriteString(":") // an empty ( ) is a shell syntax error
	}
	b.WriteString(o.Commands)
	if !strings.HasSuffix(o.Commands, "\n") {
		b.WriteString("\n")
	}
	b.WriteString(")\necho GODWIT-INIT-EXIT=$?\npoweroff -f\n")
	return b.String()
}

// Initramfs builds a newc cpio archive (gzip-compressed if o.Gzip) holding
// /init, /bin/busybox, /dev/console, the modules and the extra files.
// The archive is reproducible: the same inputs give the same bytes.
func Initramfs(o InitramfsOptions) ([]byte, error) {
	bbPath := o.Busybox
	if bbPath == "" {
		bbPath = DefaultBusybox
	}
	bb, err := os.ReadFile(bbPath)
	if err != nil {
		return nil, fmt.Errorf("testvm: read busybox (install busybox-static): %w", err)
	}
	if err := checkStatic(bb); err != nil {
		return nil, fmt.Errorf("testvm: %s: %w (install busybox-static)", bbPath, err)
	}
	init := o.Init
	if init == "" {
		init = o.DefaultInit()
	}

	type entry struct {
		data []byte
		mode uint64
	}
	files := map[string]entry{
		"init":        {[]byte(init), 0o755},
		"bin/busybox": {bb, 0o755},
	}
	for _, m := range o.Modules {
		data, err := m.Load()
		if err != nil {
			return nil, err
		}
		files["lib/modules/"+m.Name+".ko"] = entry{data, 0o644}
	}
	for _, f := range o.Files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" || p == "." {
			return nil, fmt.Errorf("testvm: initramfs file with empty path")
		}
		mode := uint64(f.Mode.Perm())
		if mode == 0 {
			mode = 0o644
		}
		files[p] = entry{f.Data, mode}
	}
	dirs := map[string]bool{}
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc", "lib/modules", "mnt"} {
		dirs[d] = true
	}
	for p := range files {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		for p := path.Dir(d); p != "."; p = path.Dir(p) {
			dirs[p] = true
		}
		if _, clash := files[d]; clash {
			return nil, fmt.Errorf("testvm: initramfs path %q is both a file and a directory", d)
		}
	}

	var recs []cpio.Record
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList) // parents sort before children
	recs = append(recs, cpio.Directory(".", 0o755))
	for _, d := range dirList {
		mode := uint64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		recs = append(recs, cpio.Directory(d, mode))
	}
	recs = append(recs, cpio.CharDev("dev/console", 0o600, 5, 1), cpio.CharDev("dev/null", 0o666, 1, 3))
	fileList := make([]string, 0, len(files))
	for p := range files {
		fileList = append(fileList, p)
	}
	sort.Strings(fileList)
	for _, p := range fileList {
		e := files[p]
		recs = append(recs, cpio.StaticRecord(e.data, cpio.Info{Name: p, Mode: cpio.S_IFREG | e.mode}))
	}

	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	for i, r := range recs {
		r.Ino = uint64(i + 1)
		r.NLink = 1
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			r.NLink = 2
		}
		if err := w.WriteRecord(cpio.MakeReproducible(r)); err != nil {
			return nil, fmt.Errorf("testvm: write initramfs: %w", err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, fmt.Errorf("testvm: write initramfs: %w", err)
	}
	if !o.Gzip {
		return buf.Bytes(), nil
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("testvm: gzip initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("testvm: gzip initramfs: %w", err)
	}
	return gz.Bytes(), nil
}

// InitramfsFile builds the initramfs and stores it in the cache under a
// name derived from its contents, returning the path. Concurrent callers
// building the same archive are safe.
func InitramfsFile(o InitramfsOptions) (string, error) {
	data, err := Initramfs(o)
	if err != nil {
		return "", err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	ext := ".cpio"
	if o.Gzip {
		ext = ".cpio.gz"
	}
	p, err := cachedBlob(filepath.Join(cache, "initramfs"), "initramfs", ext, data)
	if err != nil {
		return "", fmt.Errorf("testvm: %w", err)
	}
	return p, nil
}

// checkStatic rejects dynamically linked executables, which would not run
// in an initramfs that has no libc.
func checkStatic(b []byte) error {
	ef, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked")
		}
	}
	return nil
}
