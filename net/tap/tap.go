// Package tap opens Linux TAP devices for virtio-net: by name (an existing
// device, or one created on the spot and optionally attached to a bridge),
// with IFF_VNET_HDR so frames carry the 12-byte virtio_net_hdr_v1, and
// checksum/TSO offloads configurable to match what the guest negotiated.
//
// The file descriptor is non-blocking and served by the Go runtime's
// poller: a reader blocked in ReadV costs no thread, and SetReadDeadline
// unblocks it (how virtio-net pauses its receive path).
package tap

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Offload flags for SetOffload (TUN_F_* in <linux/if_tun.h>).
const (
	OffloadCsum   = 0x01
	OffloadTSO4   = 0x02
	OffloadTSO6   = 0x04
	OffloadTSOECN = 0x08
	OffloadUFO    = 0x10
)

// VnetHdrSize is the size of virtio_net_hdr_v1 (with num_buffers), what
// virtio 1.x drivers use.
const VnetHdrSize = 12

// DevicePath is the clone device.
const DevicePath = "/dev/net/tun"

// Options selects and sets up the TAP.
type Options struct {
	// Name of the TAP. An existing TAP is opened; otherwise one is created
	// (needs CAP_NET_ADMIN). Empty lets the kernel pick "tapN".
	Name string
	// Bridge, when set, is an existing bridge to attach the TAP to.
	Bridge string
	// NoVnetHdr opens the TAP without IFF_VNET_HDR (plain frames).
	NoVnetHdr bool
	// Up brings the link up (a created TAP starts down).
	Up bool
}

// MaxIov is the most buffers one ReadV or WriteV takes (UIO_MAXIOV).
const MaxIov = 1024

// Tap is an open TAP device.
type Tap struct {
	f       *os.File
	rc      syscall.RawConn
	name    string
	vnetHdr bool
	// One iovec array and poller function per direction, so ReadV and
	// WriteV issue readv and writev without allocating.
	rd, wr *vecOp
}

// vecOp is one direction's readv/writev as a function for the poller,
// built once so that a call does not allocate a closure.
type vecOp struct {
	trap uintptr
	vec  [MaxIov]unix.Iovec
	bufs [][]byte
	wait bool
	n    int
	err  error
	fn   func(fd uintptr) bool
}

func newVecOp(trap uintptr) *vecOp {
	o := &vecOp{trap: trap}
	o.fn = o.do
	return o
}

// do runs with the poller's lock for the direction held: it reports done
// unless the call would block and the caller waits.
func (o *vecOp) do(fd uintptr) bool {
	o.n, o.err = rwv(o.trap, fd, &o.vec, o.bufs)
	return !o.wait || o.err != unix.EAGAIN
}

// ErrWouldBlock is returned by TryReadV when no frame is waiting.
var ErrWouldBlock = errors.New("no frame waiting")

// rwv issues readv or writev (trap) on fd with bufs (at most MaxIov,
// checked by the caller) described in vec, which it clears afterwards so
// that no reference to the buffers stays behind. The caller holds the
// poller's lock for the direction vec belongs to.
func rwv(trap, fd uintptr, vec *[MaxIov]unix.Iovec, bufs [][]byte) (int, error) {
	for i, b := range bufs {
		if len(b) == 0 {
			vec[i] = unix.Iovec{}
			continue
		}
		vec[i].Base = unsafe.SliceData(b)
		vec[i].SetLen(len(b))
	}
	var p unsafe.Pointer
	if len(bufs) > 0 {
		p = unsafe.Pointer(&vec[0])
	}
	r, _, e := unix.Syscall(trap, fd, uintptr(p), uintptr(len(bufs)))
	clear(vec[:len(bufs)])
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// ErrNoPermission and ErrNoDevice classify the usual setup failures.
var (
	ErrNoPermission = errors.New("not permitted")
	ErrNoDevice     = errors.New("TUN/TAP driver unavailable")
)

// explain turns the errno of opening the clone device or TUNSETIFF into an
// error that says what to do.
func explain(name string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return fmt.Errorf("tap %q: %w: %s is missing; load the tun module (modprobe tun) or create the node (mknod %s c 10 200): %v",
			name, ErrNoDevice, DevicePath, DevicePath, err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("tap %q: %w: creating or attaching a TAP needs CAP_NET_ADMIN; run as root, or create it beforehand "+
			"with `ip tuntap add dev %s mode tap vnet_hdr user $USER` and pass its name: %v", name, ErrNoPermission, nameOr(name), err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("tap %q is already in use by another process: %v", name, err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("tap %q: the kernel refused the flags (is %q a TUN device, or a TAP created without vnet_hdr?): %v", name, name, err)
	}
	return fmt.Errorf("tap %q: %w", name, err)
}

func nameOr(n string) string {
	if n == "" {
		return "tap0"
	}
	return n
}

// Open opens (or creates) the TAP described by o.
func Open(o Options) (*Tap, error) {
	if len(o.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap %q: name longer than %d bytes", o.Name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, explain(o.Name, err)
	}
	ifr, err := unix.NewIfreq(o.Name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: %w", o.Name, err)
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if !o.NoVnetHdr {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, explain(o.Name, err)
	}
	t, err := newTap(fd, ifr.Name(), !o.NoVnetHdr)
	if err != nil {
		return nil, err
	}
	if o.Bridge != "" || o.Up {
		link, err := netlink.LinkByName(t.name)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("tap %q: look up link: %w", t.name, err)
		}
		if o.Bridge != "" {
			br, err := netlink.LinkByName(o.Bridge)
			if err != nil {
				t.Close()
				return nil, fmt.Errorf("tap %q: bridge %q: %w", t.name, o.Bridge, err)
			}
			if br.Type() != "bridge" {
				t.Close()
				return nil, fmt.Errorf("tap %q: %q is a %s, not a bridge", t.name, o.Bridge, br.Type())
			}
			if err := netlink.LinkSetMaster(link, br); err != nil {
				t.Close()
				return nil, explain(t.name, fmt.Errorf("attach to bridge %q: %w", o.Bridge, err))
			}
		}
		if o.Up {
			if err := netlink.LinkSetUp(link); err != nil {
				t.Close()
				return nil, explain(t.name, fmt.Errorf("set link up: %w", err))
			}
		}
	}
	return t, nil
}

// newTap wraps fd, a non-blocking TAP descriptor attached to interface
// name, and sets its virtio-net header size when vnetHdr. On failure fd
// is closed.
func newTap(fd int, name string, vnetHdr bool) (*Tap, error) {
	t := &Tap{f: os.NewFile(uintptr(fd), DevicePath), name: name, vnetHdr: vnetHdr,
		rd: newVecOp(unix.SYS_READV), wr: newVecOp(unix.SYS_WRITEV)}
	var err error
	if t.rc, err = t.f.SyscallConn(); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("tap %q: %w", t.name, err)
	}
	if t.vnetHdr {
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VnetHdrSize); err != nil {
			t.Close()
			return nil, fmt.Errorf("tap %q: TUNSETVNETHDRSZ %d: %w", t.name, VnetHdrSize, err)
		}
	}
	return t, nil
}

// FromFile uses f, an open TAP device (a /dev/net/tun descriptor already
// attached to its interface with TUNSETIFF, such as one another process
// opened and passed in), through a duplicate of its descriptor: closing
// the Tap leaves f open, and the caller closes f when done. The TAP was
// opened with IFF_VNET_HDR or not, and VnetHdr says which. Nothing here
// needs privileges: a process that dropped them can use a TAP that a
// privileged one created and configured.
func FromFile(f *os.File) (*Tap, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("TAP descriptor %s: %w", f.Name(), err)
	}
	var fd int
	var ferr error
	if err := rc.Control(func(ofd uintptr) {
		fd, ferr = unix.FcntlInt(ofd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("TAP descriptor %s: %w", f.Name(), err)
	}
	if ferr != nil {
		return nil, fmt.Errorf("TAP descriptor %s: %w", f.Name(), ferr)
	}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP descriptor %s is not an attached TUN/TAP device (TUNGETIFF: %v)", f.Name(), err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_TAP == 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP descriptor %s is TUN device %q, not a TAP", f.Name(), ifr.Name())
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP descriptor %s: %w", f.Name(), err)
	}
	return newTap(fd, ifr.Name(), flags&unix.IFF_VNET_HDR != 0)
}

// File returns the TAP's open file, for handing it to another process
// (exec.Cmd.ExtraFiles, which FromFile then uses there). Closing the Tap
// closes it.
func (t *Tap) File() *os.File { return t.f }

// Name returns the interface name.
func (t *Tap) Name() string { return t.name }

// VnetHdr reports whether frames carry a virtio-net header.
func (t *Tap) VnetHdr() bool { return t.vnetHdr }

// FD returns the descriptor (for vhost-net, later).
func (t *Tap) FD() int { return int(t.f.Fd()) }

// SetOffload tells the kernel which offloads the reader accepts
// (TUNSETOFFLOAD with Offload* flags): with OffloadTSO4 it may hand over
// 64 KiB TCP segments with partial checksums.
func (t *Tap) SetOffload(flags int) error {
	var err error
	cerr := t.rc.Control(func(fd uintptr) { err = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags) })
	if cerr != nil {
		return fmt.Errorf("tap %q: %w", t.name, cerr)
	}
	if err != nil {
		return fmt.Errorf("tap %q: TUNSETOFFLOAD %#x: %w", t.name, flags, err)
	}
	return nil
}

// ReadV reads one frame (header first when VnetHdr) into iov (at most
// MaxIov buffers). It blocks until a frame arrives, the deadline passes
// (os.ErrDeadlineExceeded) or the TAP is closed. A frame longer than iov
// is truncated. It does not allocate. One goroutine reads at a time
// (ReadV and TryReadV share the receive iovec array).
func (t *Tap) ReadV(iov [][]byte) (int, error) { return t.read(iov, true) }

// TryReadV is ReadV without waiting: it returns ErrWouldBlock when no
// frame is queued. The deadline still applies.
func (t *Tap) TryReadV(iov [][]byte) (int, error) { return t.read(iov, false) }

func (t *Tap) read(iov [][]byte, wait bool) (int, error) {
	if len(iov) > MaxIov {
		return 0, fmt.Errorf("tap %q read: %d buffers, more than %d", t.name, len(iov), MaxIov)
	}
	o := t.rd
	o.bufs, o.wait, o.n, o.err = iov, wait, 0, nil
	cerr := t.rc.Read(o.fn)
	got, err := o.n, o.err
	o.bufs, o.err = nil, nil
	if cerr != nil {
		return 0, cerr
	}
	if err == unix.EAGAIN {
		return 0, ErrWouldBlock
	}
	if err != nil {
		return 0, fmt.Errorf("tap %q read: %w", t.name, err)
	}
	return got, nil
}

// WriteV writes one frame (header first when VnetHdr) gathered from iov
// (at most MaxIov buffers) with one writev. It does not allocate. One
// goroutine writes at a time (the transmit iovec array is shared).
func (t *Tap) WriteV(iov [][]byte) (int, error) {
	if len(iov) > MaxIov {
		return 0, fmt.Errorf("tap %q write: %d buffers, more than %d", t.name, len(iov), MaxIov)
	}
	o := t.wr
	o.bufs, o.wait, o.n, o.err = iov, true, 0, nil
	cerr := t.rc.Write(o.fn)
	got, err := o.n, o.err
	o.bufs, o.err = nil, nil
	if cerr != nil {
		return 0, cerr
	}
	if err != nil {
		return 0, fmt.Errorf("tap %q write: %w", t.name, err)
	}
	return got, nil
}

// SetReadDeadline bounds blocked and future ReadV calls; the zero time
// removes the bound.
func (t *Tap) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// Close closes the TAP (a created, non-persistent TAP disappears).
func (t *Tap) Close() error { return t.f.Close() }
