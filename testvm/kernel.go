package testvm

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// CloudKernelPackage is the Debian meta package whose kernel LinuxKernel
// returns: a small kernel meant for virtual machines.
const CloudKernelPackage = "linux-image-cloud-amd64"

// GenericKernelPackage is the Debian meta package of the general-purpose
// kernel, which has the modules (kvm-amd, 9p, overlay) the nested harness
// needs in its L1 guest.
const GenericKernelPackage = "linux-image-amd64"

// GuestModules are the modules LinuxKernel resolves into Kernel.Modules:
// virtio transports and devices a VMM offers to a test guest. Modules the
// kernel has built in (ext4 on the cloud kernel) are left out.
var GuestModules = []string{
	"virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
	"virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "failover",
	"net_failover", "virtio_rng", "virtio_console", "ext4",
}

// maxModuleSize bounds the size of one (decompressed) kernel module read
// into memory.
const maxModuleSize = 64 << 20

// Kernel is an extracted Debian kernel package in the cache.
type Kernel struct {
	// Package is the versioned package, e.g. linux-image-6.1.0-56-cloud-amd64.
	Package string
	// Version is the package version, e.g. 6.1.192-2.
	Version string
	// Release is the kernel release (uname -r), the name of its
	// lib/modules directory.
	Release string
	// Root is the directory the package was extracted into.
	Root string
	// Vmlinuz is the path of the bzImage.
	Vmlinuz string
	// Modules are the modules LinuxKernel was asked for and their
	// dependencies, in an order in which they can be loaded.
	Modules []Module

	index map[string]string // normalized module name -> file
}

// Module is one loadable kernel module file.
type Module struct {
	// Name is the module name with '-' replaced by '_' (kvm_amd).
	Name string
	// Path is the file, possibly compressed (.ko, .ko.xz, .ko.zst, .ko.gz).
	Path string
	// Depends are the names of the modules this one needs, from .modinfo.
	Depends []string
}

func isModuleFile(name string) bool {
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// normModule turns a module file or module name into its canonical name.
func normModule(name string) string {
	name = filepath.Base(name)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(name, ext) {
			name = strings.TrimSuffix(name, ext)
			break
		}
	}
	return strings.ReplaceAll(name, "-", "_")
}

// LinuxKernel returns Debian's cloud kernel (the versioned package that
// linux-image-cloud-amd64 depends on), downloaded with apt-get into the
// cache on first use, with Modules set to GuestModules and their
// dependencies (those the kernel builds in are skipped).
func LinuxKernel(ctx context.Context) (*Kernel, error) {
	k, err := DebianKernel(ctx, CloudKernelPackage)
	if err != nil {
		return nil, err
	}
	var want []string
	for _, m := range GuestModules {
		if _, ok := k.index[m]; ok {
			want = append(want, m)
		}
	}
	if k.Modules, err = k.ResolveModules(want...); err != nil {
		return nil, err
	}
	return k, nil
}

// pointerTTL is how long the cache trusts its record of which versioned
// package a meta package pointed to before asking apt again.
const pointerTTL = 24 * time.Hour

// DebianKernel returns the kernel of a Debian meta package such as
// linux-image-amd64: the versioned package it depends on is fetched with
// `apt-get download`, extracted with `dpkg-deb -x` under
// CacheDir()/debian/PACKAGE_VERSION, and reused from there. Which version
// the meta package points to is remembered for a day, so cached runs need
// no apt at all (and work offline, as in the nested harness's L1).
func DebianKernel(ctx context.Context, meta string) (*Kernel, error) {
	cache, err := CacheDir()
	if err != nil {
		return nil, err
	}
	base := filepath.Join(cache, "debian")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, fmt.Errorf("testvm: %w", err)
	}
	pointer := filepath.Join(base, meta+".current")
	cached := func() (*Kernel, error) {
		b, err := os.ReadFile(pointer)
		if err != nil {
			return nil, err
		}
		return openKernel(filepath.Join(base, strings.TrimSpace(string(b))))
	}
	if st, err := os.Stat(pointer); err == nil && (time.Since(st.ModTime()) < pointerTTL || os.Getenv("GODWIT_NESTED_L1") == "1") {
		if k, err := cached(); err == nil {
			return k, nil
		}
	}
	for _, tool := range []string{"apt-cache", "apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			if k, cerr := cached(); cerr == nil {
				return k, nil // stale but usable
			}
			return nil, fmt.Errorf("testvm: %s not found: fetching %s needs a Debian-based host with apt (or a cache in $GODWIT_CACHE filled on one)", tool, meta)
		}
	}
	pkg, version, err := resolveDebianPackage(ctx, meta)
	if err != nil {
		if k, cerr := cached(); cerr == nil {
			return k, nil
		}
		return nil, err
	}
	name := pkg + "_" + strings.ReplaceAll(version, ":", "%3a")
	final := filepath.Join(base, name)
	if _, err := os.Stat(filepath.Join(final, ".complete")); err != nil {
		if err := fetchDebianPackage(ctx, base, pkg, final); err != nil {
			return nil, err
		}
	}
	k, err := openKernel(final)
	if err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(pointer, []byte(name+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("testvm: %w", err)
	}
	return k, nil
}

// resolveDebianPackage finds the versioned linux-image package a meta
// package depends on, and its candidate version.
func resolveDebianPackage(ctx context.Context, meta string) (pkg, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", meta).Output()
	if err != nil {
		return "", "", fmt.Errorf("testvm: apt-cache depends %s: %w (is the package known? run apt-get update)", meta, exitErr(err))
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			pkg = f[1]
			break
		}
	}
	if pkg == "" {
		return "", "", fmt.Errorf("testvm: %s depends on no linux-image package (apt-cache depends said %q)", meta, strings.TrimSpace(string(out)))
	}
	out, err = exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("testvm: apt-cache show %s: %w", pkg, exitErr(err))
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			version = strings.TrimSpace(v)
			break
		}
	}
	if version == "" {
		return "", "", fmt.Errorf("testvm: apt-cache show %s printed no version", pkg)
	}
	return pkg, version, nil
}

// fetchDebianPackage downloads pkg and extracts it to final, through a
// temporary directory so concurrent fetches don't see half a tree.
func fetchDebianPackage(ctx context.Context, base, pkg, final string) error {
	tmp, err := os.MkdirTemp(base, ".fetch-"+pkg+"-")
	if err != nil {
		return fmt.Errorf("testvm: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt drops privileges to _apt for downloads; a private directory it
	// cannot write to only costs a warning, so make it writable.
	os.Chmod(tmp, 0o777)
	dl := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("testvm: apt-get download %s: %w: %s", pkg, exitErr(err), lastLine(out))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("testvm: apt-get download %s left %d .deb files", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return fmt.Errorf("testvm: dpkg-deb -x %s: %w: %s", filepath.Base(debs[0]), exitErr(err), lastLine(out))
	}
	if err := os.WriteFile(filepath.Join(root, ".complete"), []byte(pkg+"\n"), 0o644); err != nil {
		return fmt.Errorf("testvm: %w", err)
	}
	return installDir(root, final)
}

func exitErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, lastLine(ee.Stderr))
	}
	return err
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// openKernel indexes an extracted kernel package tree.
func openKernel(root string) (*Kernel, error) {
	if _, err := os.Stat(filepath.Join(root, ".complete")); err != nil {
		return nil, fmt.Errorf("testvm: %s is not a complete kernel extraction: %w", root, err)
	}
	vmlinuzes, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(vmlinuzes) != 1 {
		return nil, fmt.Errorf("testvm: %s has %d boot/vmlinuz-* files, want 1", root, len(vmlinuzes))
	}
	k := &Kernel{
		Root:    root,
		Vmlinuz: vmlinuzes[0],
		Release: strings.TrimPrefix(filepath.Base(vmlinuzes[0]), "vmlinuz-"),
		index:   map[string]string{},
	}
	name := filepath.Base(root)
	if i := strings.IndexByte(name, '_'); i > 0 {
		k.Package, k.Version = name[:i], strings.ReplaceAll(name[i+1:], "%3a", ":")
	}
	modDir := filepath.Join(root, "lib", "modules", k.Release)
	if _, err := os.Stat(modDir); err != nil {
		modDir = filepath.Join(root, "usr", "lib", "modules", k.Release) // merged-/usr packages
	}
	err := filepath.WalkDir(modDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && isModuleFile(d.Name()) {
			k.index[normModule(d.Name())] = path
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("testvm: index modules of %s: %w", root, err)
	}
	if len(k.index) == 0 {
		return nil, fmt.Errorf("testvm: %s has no kernel modules under %s", root, modDir)
	}
	return k, nil
}

// HasModule reports whether the kernel ships name (either spelling of
// '-'/'_') as a loadable module.
func (k *Kernel) HasModule(name string) bool {
	_, ok := k.index[normModule(name)]
	return ok
}

// ResolveModules returns the named modules and everything they depend on,
// dependencies first, each once.
func (k *Kernel) ResolveModules(names ...string) ([]Module, error) {
	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("testvm: module dependency cycle through %s", name)
		}
		path, ok := k.index[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("testvm: module %s (needed by %s) not in %s", name, from, k.Root)
			}
			return fmt.Errorf("testvm: module %s not in %s (built in, or not built?)", name, k.Root)
		}
		state[name] = 1
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, Module{Name: name, Path: path, Depends: deps})
		return nil
	}
	for _, n := range names {
		if err := visit(normModule(n), ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Load returns the module's ELF bytes, decompressed: busybox insmod is
// given plain .ko files.
func (m Module) Load() ([]byte, error) {
	return readModule(m.Path)
}

func readModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("testvm: %w", err)
	}
	defer f.Close()
	var r io.Reader = bufio.NewReader(f)
	switch {
	case strings.HasSuffix(path, ".ko.xz"):
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("testvm: %s: %w", path, err)
		}
		r = xr
	case strings.HasSuffix(path, ".ko.zst"):
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("testvm: %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(path, ".ko.gz"):
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("testvm: %s: %w", path, err)
		}
		r = gr
	}
	b, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("testvm: read %s: %w", path, err)
	}
	if len(b) > maxModuleSize {
		return nil, fmt.Errorf("testvm: %s is larger than %d bytes", path, maxModuleSize)
	}
	return b, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	b, err := readModule(path)
	if err != nil {
		return nil, err
	}
	ef, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("testvm: %s is not an ELF module: %w", path, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("testvm: %s has no .modinfo section", path)
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("testvm: %s .modinfo: %w", path, err)
	}
	var deps []string
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, normModule(d))
				}
			}
		}
	}
	sort.Strings(deps)
	return deps, nil
}
