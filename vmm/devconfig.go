package vmm

import "os"

// DiskConfig attaches a disk image as a virtio-blk device.
type DiskConfig struct {
	// Path of the image file (raw or qcow2).
	Path string
	// Format forces "raw" or "qcow2"; empty detects it from the header.
	Format string
	// ReadOnly exposes the disk read-only (VIRTIO_BLK_F_RO).
	ReadOnly bool
	// Serial is what the guest reads as the disk's ID.
	Serial string
}

// NetConfig attaches a virtio-net device.
type NetConfig struct {
	// Tap is the name of a TAP device to open (created when missing).
	Tap string
	// Bridge, when set, is a bridge to attach a new TAP to.
	Bridge string
	// TapFile, when set, is an already open TAP device (a /dev/net/tun
	// descriptor attached to its interface, which a privileged process
	// may have created, bridged and passed in) used instead of opening
	// one: no privilege is needed. Tap and Bridge then only say what it
	// is (a snapshot records them); Tap, if given, must be its name. The
	// VM uses a duplicate of the descriptor; the caller keeps TapFile and
	// closes it when no VM needs it any more (a rebooted guest's new VM
	// uses it again).
	TapFile *os.File
	// User selects the user-mode network backend (no TAP, no root).
	User *UserNetConfig
	// MAC is the guest's MAC address, "52:54:00:12:34:56"; empty picks a
	// random locally administered one.
	MAC string
}

// UserNetConfig configures user-mode networking.
type UserNetConfig struct {
	// Subnet is the guest network in CIDR form; empty means 10.0.2.0/24.
	Subnet string
	// HostForwards are ports on the host forwarded into the guest.
	HostForwards []HostForward
	// Restrict confines the guest to the gateway and forwarded ports.
	Restrict bool
	// DNS is the resolver ("IP" or "IP:port") the gateway's DNS server
	// forwards to; empty means the host's resolvers.
	DNS string
}

// HostForward forwards a host port to a guest port.
type HostForward struct {
	Proto     string // "tcp" or "udp"
	HostAddr  string // empty means 127.0.0.1
	HostPort  int
	GuestAddr string // empty means the guest's DHCP address
	GuestPort int
}
