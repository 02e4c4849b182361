package daemon

// godwit vm export and import: GET /v1/vms/NAME/export streams a VM's
// bundle (BUNDLE.md), POST /v1/import defines a VM from one.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/disk"
)

// BundleMediaType is the media type of a bundle.
const BundleMediaType = "application/vnd.godwit.bundle"

// diskSpec is a --disk value: key=value pairs in order.
type diskSpec [][2]string

func parseDiskSpec(s string) diskSpec {
	var kv diskSpec
	for _, part := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(part, "=")
		kv = append(kv, [2]string{k, v})
	}
	return kv
}

func (s diskSpec) get(k string) string {
	for _, p := range s {
		if p[0] == k {
			return p[1]
		}
	}
	return ""
}

// set replaces key k's value (or appends k=v); v "" removes it.
func (s diskSpec) set(k, v string) diskSpec {
	out := diskSpec{}
	done := false
	for _, p := range s {
		if p[0] == k {
			if v != "" && !done {
				out = append(out, [2]string{k, v})
			}
			done = true
			continue
		}
		out = append(out, p)
	}
	if !done && v != "" {
		out = append(out, [2]string{k, v})
	}
	return out
}

func (s diskSpec) String() string {
	parts := make([]string, len(s))
	for i, p := range s {
		if p[1] == "" {
			parts[i] = p[0]
		} else {
			parts[i] = p[0] + "=" + p[1]
		}
	}
	return strings.Join(parts, ",")
}

func (s diskSpec) readOnly() bool {
	switch s.get("readonly") {
	case "on", "true", "yes", "1":
		return true
	}
	for _, p := range s {
		if p[0] == "readonly" && p[1] == "" {
			return true
		}
	}
	return false
}

// openSpecImage opens a disk spec's image read-only.
func openSpecImage(spec string) (disk.Image, error) {
	s := parseDiskSpec(spec)
	f := s.get("format")
	if f != disk.FormatRaw && f != disk.FormatQcow2 {
		f = ""
	}
	return disk.Open(s.get("path"), disk.OpenOptions{ReadOnly: true, Format: f})
}

// snapshotDisks is the part of a snapshot's config.json naming its disks'
// images (vmm's snapshotConfig).
type snapshotDisks struct {
	Disks []struct {
		Image    string `json:"image"`
		Format   string `json:"format,omitempty"`
		ReadOnly bool   `json:"readonly,omitempty"`
		Internal string `json:"internal_snapshot,omitempty"`
	} `json:"disks"`
}

// snapshotImages returns the images holding the disk state of snapshot
// dir of VM def: with the overlay disk policy, frozen images nobody
// writes.
func snapshotImages(def Definition, dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var sc snapshotDisks
	if err := json.Unmarshal(b, &sc); err != nil {
		return nil, fmt.Errorf("snapshot %s: config.json: %v", dir, err)
	}
	if len(sc.Disks) != len(def.Disks) {
		return nil, fmt.Errorf("snapshot %s has %d disks, the VM's definition %d", dir, len(sc.Disks), len(def.Disks))
	}
	out := make([]string, len(sc.Disks))
	for i, sd := range sc.Disks {
		if sd.Internal != "" {
			return nil, fmt.Errorf("snapshot %s: disk %d is a qcow2 internal snapshot (only the overlay disk policy freezes images)", dir, i)
		}
		out[i] = sd.Image
	}
	return out, nil
}

// exportSource is what Export exports: the definition and one image path
// per disk.
type exportSource struct {
	def      Definition
	images   []string
	snapshot string
}

// exportHTTP answers GET /v1/vms/NAME/export: a stopped VM's disks are
// exported under its operation lock (nothing starts it meanwhile); a
// running or paused one is snapshotted first and the snapshot's frozen
// images are exported, so the VM never stops.
func (d *Daemon) exportHTTP(w http.ResponseWriter, r *http.Request, name string) {
	e, err := d.lookup(name)
	if err != nil {
		reply(w, 0, nil, err)
		return
	}
	e.mu.Lock()
	live := e.proc != nil || e.launching
	e.mu.Unlock()
	if live {
		snap := "export-" + time.Now().UTC().Format("20060102-150405.000")
		s, _, err := d.Snapshot(name, snap)
		if err != nil {
			reply(w, 0, nil, err)
			return
		}
		e.mu.Lock()
		def := e.def
		e.mu.Unlock()
		imgs, err := snapshotImages(def, s.Dir)
		if err != nil {
			reply(w, 0, nil, err)
			return
		}
		d.event(name, "export", "from snapshot "+snap)
		d.streamBundle(w, exportSource{def: def, images: imgs, snapshot: snap})
		return
	}
	err = d.withOp(name, func(e *vmEntry) error {
		e.mu.Lock()
		def, busy, st := e.def, e.proc != nil || e.launching, e.state
		e.mu.Unlock()
		if busy {
			return errorf(http.StatusConflict, "VM %s started meanwhile (%s): export again", name, st)
		}
		src := exportSource{def: def}
		for _, s := range def.Disks {
			src.images = append(src.images, parseDiskSpec(s).get("path"))
		}
		d.event(name, "export", "")
		d.streamBundle(w, src)
		return nil
	})
	if err != nil {
		reply(w, 0, nil, err)
	}
}

// streamBundle opens src's images and writes its bundle as the response.
// A failure once the body has begun aborts the connection, so that the
// client never takes a short bundle for a whole one.
func (d *Daemon) streamBundle(w http.ResponseWriter, src exportSource) {
	var imgs []disk.Image
	defer func() {
		for _, img := range imgs {
			img.Close()
		}
	}()
	for i, p := range src.images {
		spec := parseDiskSpec(src.def.Disks[i])
		spec = spec.set("path", p)
		if src.snapshot != "" {
			spec = spec.set("format", "") // frozen images: detect
		}
		img, err := openSpecImage(spec.String())
		if err != nil {
			writeError(w, http.StatusConflict, fmt.Sprintf("VM %s: disk %d: %s", src.def.Name, i, oneLine(err)))
			return
		}
		imgs = append(imgs, img)
	}
	w.Header().Set("Content-Type", BundleMediaType)
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", src.def.Name+".godwit"))
	if src.snapshot != "" {
		w.Header().Set("X-Godwit-Snapshot", src.snapshot)
	}
	var total int64
	for _, img := range imgs {
		total += img.Size()
	}
	w.Header().Set("X-Godwit-Virtual-Size", fmt.Sprint(total))
	w.WriteHeader(http.StatusOK)
	m := Manifest{Created: time.Now().UTC(), Definition: src.def, FromSnapshot: src.snapshot}
	if err := WriteBundle(w, m, imgs, nil); err != nil {
		d.log.Error("export failed", "vm", src.def.Name, "err", err)
		d.event(src.def.Name, "export-failed", oneLine(err))
		panic(http.ErrAbortHandler)
	}
}

// diskDir makes a new directory for a VM's disks under the state
// directory: STATE/disks/NAME-RANDOM, never one that exists.
func (d *Daemon) diskDir(name string) (string, error) {
	parent := filepath.Join(d.cfg.StateDir, "disks")
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", err
	}
	var b [4]byte
	rand.Read(b[:])
	dir := filepath.Join(parent, name+"-"+hex.EncodeToString(b[:]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
}

// ImportOptions are POST /v1/import's query parameters.
type ImportOptions struct {
	// Name names the new VM (default: the bundle's).
	Name string
	// Format is the format of the disks written: raw or qcow2 (default:
	// each disk's format in the bundle).
	Format string
}

// importTarget creates an import's disks once the manifest is read.
type importTarget struct {
	d     *Daemon
	opts  ImportOptions
	name  string
	dir   string
	imgs  []disk.Image
	paths []string
	forms []string
}

func (t *importTarget) Manifest(m *Manifest) ([]disk.Image, error) {
	t.name = t.opts.Name
	if t.name == "" {
		t.name = m.Definition.Name
	}
	if err := CheckName("VM", t.name); err != nil {
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	if _, err := t.d.lookup(t.name); err == nil {
		return nil, errorf(http.StatusConflict, "a VM named %q exists (import --name NEW names the imported one)", t.name)
	}
	dir, err := t.d.diskDir(t.name)
	if err != nil {
		return nil, err
	}
	t.dir = dir
	for _, md := range m.Disks {
		f := t.opts.Format
		if f == "" {
			f = md.Format
		}
		p := filepath.Join(dir, fmt.Sprintf("disk%d.%s", md.Index, f))
		if err := disk.Create(p, disk.CreateOptions{Format: f, Size: md.VirtualSize}); err != nil {
			return nil, err
		}
		img, err := disk.Open(p, disk.OpenOptions{Format: f})
		if err != nil {
			return nil, err
		}
		t.imgs = append(t.imgs, img)
		t.paths = append(t.paths, p)
		t.forms = append(t.forms, f)
	}
	return t.imgs, nil
}

func (t *importTarget) closeAll() error {
	var first error
	for _, img := range t.imgs {
		if err := img.Close(); err != nil && first == nil {
			first = err
		}
	}
	t.imgs = nil
	return first
}

// Import reads a bundle from r, checking every checksum, writes its disks
// under STATE/disks and only then defines the VM. On any failure nothing
// is defined and no file is left.
func (d *Daemon) Import(r io.Reader, opts ImportOptions) (VM, error) {
	switch opts.Format {
	case "", disk.FormatRaw, disk.FormatQcow2:
	default:
		return VM{}, errorf(http.StatusBadRequest, "invalid format %q: use raw or qcow2", opts.Format)
	}
	if opts.Name != "" {
		if err := CheckName("VM", opts.Name); err != nil {
			return VM{}, errorf(http.StatusBadRequest, "%v", err)
		}
	}
	t := &importTarget{d: d, opts: opts}
	fail := func(err error) (VM, error) {
		t.closeAll()
		if t.dir != "" {
			os.RemoveAll(t.dir)
		}
		var be *BundleError
		if errors.As(err, &be) {
			return VM{}, errorf(http.StatusBadRequest, "%s", oneLine(err))
		}
		return VM{}, err
	}
	m, err := ReadBundle(r, t, nil)
	if err != nil {
		return fail(err)
	}
	if err := t.closeAll(); err != nil {
		return fail(err)
	}
	def := m.Definition
	def.Name = t.name
	for k, md := range m.Disks {
		def.Disks[md.Index] = parseDiskSpec(def.Disks[md.Index]).set("path", t.paths[k]).set("format", t.forms[k]).String()
	}
	v, err := d.Create(def)
	if err != nil {
		return fail(err)
	}
	d.event(def.Name, "imported", fmt.Sprintf("from a bundle of %s (%d disks)", m.Definition.Name, len(m.Disks)))
	return v, nil
}

// importHTTP answers POST /v1/import?name=N&format=F with a bundle as
// the body.
func (d *Daemon) importHTTP(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != BundleMediaType && mt != "application/octet-stream") {
			writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("the import body must be a bundle (Content-Type: %s or application/octet-stream), not %s", BundleMediaType, ct))
			return
		}
	}
	q := r.URL.Query()
	for k := range q {
		if k != "name" && k != "format" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown query parameter %q (known: name, format)", k))
			return
		}
	}
	v, err := d.Import(r.Body, ImportOptions{Name: q.Get("name"), Format: q.Get("format")})
	if err != nil {
		// Read the rest, so that the client, still sending, sees the
		// answer rather than a closed connection.
		io.Copy(io.Discard, r.Body)
	}
	reply(w, http.StatusCreated, v, err)
}
