package daemon

// Templates, clones and foreign disk images.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/godwit-vm/godwit/disk"
)

// CloneRequest is the body of POST /v1/vms/NAME/clone.
type CloneRequest struct {
	// Name names the clone.
	Name string `json:"name"`
	// Full copies the disks; otherwise they are qcow2 overlays on the
	// template's (or the snapshot's) disks.
	Full bool `json:"full,omitempty"`
	// Snapshot clones the disk state of one of the VM's snapshots (its
	// frozen images); the VM may be running.
	Snapshot string `json:"snapshot,omitempty"`
}

// updateDef replaces a stored VM's definition.
func (s *store) updateDef(def Definition, ev Event) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		v := b.Get([]byte(def.Name))
		if v == nil {
			return fmt.Errorf("no VM named %q in the store", def.Name)
		}
		var rec vmRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		rec.Def = def
		nv, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(def.Name), nv); err != nil {
			return err
		}
		return putEvent(tx, def.Name, ev)
	})
}

// refuseTemplate says why a template cannot start.
func refuseTemplate(e *vmEntry) error {
	e.mu.Lock()
	t := e.def.Template
	e.mu.Unlock()
	if t {
		return errorf(http.StatusConflict, "VM %s is a template and cannot be started: clone it (godwit vm clone %s NEW)", e.name, e.name)
	}
	return nil
}

// Template makes a stopped VM a template: its writable disk images become
// read-only files (the bases of its clones' overlays) and it can no
// longer be started.
func (d *Daemon) Template(name string) (VM, error) {
	err := d.withOp(name, func(e *vmEntry) error {
		e.mu.Lock()
		def, busy, st := e.def, e.proc != nil || e.launching || e.timer != nil, e.state
		e.mu.Unlock()
		if busy {
			return errorf(http.StatusConflict, "VM %s is %s: stop it before making it a template", name, st)
		}
		if def.Template {
			return nil
		}
		for i, s := range def.Disks {
			p := parseDiskSpec(s).get("path")
			fi, err := os.Stat(p)
			if err != nil {
				return errorf(http.StatusConflict, "VM %s: disk %d: %v", name, i, err)
			}
			if err := os.Chmod(p, fi.Mode().Perm()&^0o222); err != nil {
				return fmt.Errorf("VM %s: disk %d: freeze: %w", name, i, err)
			}
		}
		def.Template = true
		if err := d.st.updateDef(def, Event{Time: time.Now(), Event: "template", Detail: "its disks are read-only bases"}); err != nil {
			return err
		}
		e.mu.Lock()
		e.def = def
		e.mu.Unlock()
		return nil
	})
	if err != nil {
		return VM{}, err
	}
	return d.Get(name)
}

// randomMAC is a random locally administered address in 52:54:00/24.
func randomMAC() string {
	var b [3]byte
	rand.Read(b[:])
	return net.HardwareAddr{0x52, 0x54, 0x00, b[0], b[1], b[2]}.String()
}

// newMACs gives each TAP or bridge NIC of nets a new random MAC (user
// NICs get theirs from godwit each start).
func newMACs(nets []string) []string {
	out := make([]string, len(nets))
	for i, n := range nets {
		if n == "user" || strings.HasPrefix(n, "user,") {
			out[i] = n
			continue
		}
		out[i] = parseDiskSpec(n).set("mac", randomMAC()).String()
	}
	return out
}

// Clone creates VM req.Name from VM src: overlays on a template's disks
// (or on a snapshot's frozen images), or full copies.
func (d *Daemon) Clone(src string, req CloneRequest) (VM, error) {
	if err := CheckName("VM", req.Name); err != nil {
		return VM{}, errorf(http.StatusBadRequest, "%v", err)
	}
	if req.Snapshot != "" {
		if err := checkSnapName(req.Snapshot); err != nil {
			return VM{}, err
		}
	}
	if _, err := d.lookup(req.Name); err == nil {
		return VM{}, errorf(http.StatusConflict, "a VM named %q exists", req.Name)
	}
	var def Definition
	var images []string
	var dir string
	made := func() error {
		var err error
		if dir, err = d.diskDir(req.Name); err != nil {
			return err
		}
		for i, s := range def.Disks {
			spec := parseDiskSpec(s)
			if spec.readOnly() {
				// Shared read-only disks stay shared.
				continue
			}
			base := images[i]
			p := filepath.Join(dir, fmt.Sprintf("disk%d.qcow2", i))
			if req.Full {
				err = disk.Convert(base, p, disk.ConvertOptions{Format: disk.FormatQcow2}, nil)
			} else {
				err = disk.Overlay(base, p)
			}
			if err != nil {
				return fmt.Errorf("disk %d: %w", i, err)
			}
			def.Disks[i] = spec.set("path", p).set("format", disk.FormatQcow2).String()
		}
		return nil
	}
	err := d.withOp(src, func(e *vmEntry) error {
		e.mu.Lock()
		def = e.def
		busy, st := e.proc != nil || e.launching, e.state
		e.mu.Unlock()
		def.Disks = append([]string(nil), def.Disks...)
		switch {
		case req.Snapshot != "":
			sdir := filepath.Join(d.snapshotDir(src), req.Snapshot)
			if !exists(filepath.Join(sdir, "config.json")) {
				return errorf(http.StatusNotFound, "VM %s has no snapshot named %q", src, req.Snapshot)
			}
			var err error
			if images, err = snapshotImages(def, sdir); err != nil {
				return errorf(http.StatusConflict, "%v", err)
			}
		case busy:
			return errorf(http.StatusConflict, "VM %s is %s: clone one of its snapshots (--snapshot SNAP), or stop it", src, st)
		case !def.Template && !req.Full:
			return errorf(http.StatusConflict, "VM %s is not a template: overlays need disks nobody writes (godwit vm template %s), a snapshot (--snapshot SNAP), or a full copy (--full)", src, src)
		default:
			for _, s := range def.Disks {
				images = append(images, parseDiskSpec(s).get("path"))
			}
		}
		return made()
	})
	if err != nil {
		if dir != "" {
			os.RemoveAll(dir)
		}
		return VM{}, err
	}
	def.Name, def.Template = req.Name, false
	def.Nets = newMACs(def.Nets)
	v, err := d.Create(def)
	if err != nil {
		os.RemoveAll(dir)
		return VM{}, err
	}
	how := "overlays"
	if req.Full {
		how = "full copies"
	}
	if req.Snapshot != "" {
		how += " of snapshot " + req.Snapshot
	}
	d.event(req.Name, "cloned", fmt.Sprintf("from %s (%s)", src, how))
	return v, nil
}

// Foreign image formats godwit vm create converts with qemu-img.
var foreignFormats = map[string]bool{"vmdk": true, "vhdx": true, "vdi": true}

func hasForeignDisk(def Definition) bool {
	for _, s := range def.Disks {
		if foreignFormats[parseDiskSpec(s).get("format")] {
			return true
		}
	}
	return false
}

// QemuImg is the qemu-img the daemon converts foreign images with.
var QemuImg = "qemu-img"

// createForeign converts def's vmdk, vhdx and vdi disks once to qcow2
// under STATE/disks and creates the VM on the converted images.
func (d *Daemon) createForeign(def Definition) (VM, error) {
	if err := CheckName("VM", def.Name); err != nil {
		return VM{}, errorf(http.StatusBadRequest, "%v", err)
	}
	if _, err := d.lookup(def.Name); err == nil {
		return VM{}, errorf(http.StatusConflict, "a VM named %q exists", def.Name)
	}
	qi, lerr := exec.LookPath(QemuImg)
	dir := ""
	fail := func(err error) (VM, error) {
		if dir != "" {
			os.RemoveAll(dir)
		}
		return VM{}, err
	}
	disks := append([]string(nil), def.Disks...)
	for i, s := range disks {
		spec := parseDiskSpec(s)
		f := spec.get("format")
		if !foreignFormats[f] {
			continue
		}
		if lerr != nil {
			return fail(errorf(http.StatusBadRequest, "disk %d: converting %s needs qemu-img (Debian package qemu-utils)", i, f))
		}
		src := spec.get("path")
		if !filepath.IsAbs(src) {
			return fail(errorf(http.StatusBadRequest, "disk %d: path must be absolute, not %q", i, src))
		}
		if dir == "" {
			var err error
			if dir, err = d.diskDir(def.Name); err != nil {
				return fail(err)
			}
		}
		dst := filepath.Join(dir, fmt.Sprintf("disk%d.qcow2", i))
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		out, err := exec.CommandContext(ctx, qi, "convert", "-f", f, "-O", "qcow2", "--", src, dst).CombinedOutput()
		cancel()
		if err != nil {
			return fail(errorf(http.StatusBadRequest, "disk %d: qemu-img convert of %s (%s): %s", i, src, f, strings.Join(strings.Fields(string(out)+" "+err.Error()), " ")))
		}
		disks[i] = spec.set("path", dst).set("format", disk.FormatQcow2).String()
	}
	def.Disks = disks
	v, err := d.Create(def)
	if err != nil {
		return fail(err)
	}
	d.event(def.Name, "disks-converted", "foreign images converted to qcow2 under "+dir)
	return v, nil
}
