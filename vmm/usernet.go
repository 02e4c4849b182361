package vmm

import (
	"fmt"
	stdnet "net"

	"github.com/godwit-vm/godwit/net/user"
	virtionet "github.com/godwit-vm/godwit/virtio/net"
)

// userNetCloser closes a user network and forgets it.
type userNetCloser struct {
	*user.Network
	vm *VM
}

// Close implements io.Closer (the VM closes its backends).
func (c userNetCloser) Close() error {
	vm := c.vm
	vm.userNetsMu.Lock()
	for i, n := range vm.userNets {
		if n == c.Network {
			vm.userNets = append(vm.userNets[:i:i], vm.userNets[i+1:]...)
			break
		}
	}
	vm.userNetsMu.Unlock()
	return c.Network.Close()
}

// newUserBackend starts the user-mode network for cfg (see net/user).
func (vm *VM) newUserBackend(cfg *UserNetConfig) (virtionet.Backend, error) {
	uc := user.Config{Subnet: cfg.Subnet, Restrict: cfg.Restrict, DNSUpstream: cfg.DNS}
	for _, f := range cfg.HostForwards {
		uc.Forwards = append(uc.Forwards, userForward(f))
	}
	n, err := user.New(uc)
	if err != nil {
		return nil, err
	}
	vm.userNetsMu.Lock()
	vm.userNets = append(vm.userNets, n)
	vm.userNetsMu.Unlock()
	return userNetCloser{Network: n, vm: vm}, nil
}

func userForward(f HostForward) user.Forward {
	return user.Forward{Proto: f.Proto, HostAddr: f.HostAddr, HostPort: f.HostPort, GuestAddr: f.GuestAddr, GuestPort: f.GuestPort}
}

// UserNet returns the VM's i-th user-mode network (counting only NICs with
// User set, in Config.Nets order), for its forwarding and address API.
func (vm *VM) UserNet(i int) (*user.Network, error) {
	vm.userNetsMu.Lock()
	defer vm.userNetsMu.Unlock()
	nets := vm.userNets
	if i < 0 || i >= len(nets) {
		return nil, fmt.Errorf("no user-mode network %d (the VM has %d)", i, len(nets))
	}
	return nets[i], nil
}

// AddHostForward forwards a host port into the guest behind the VM's i-th
// user-mode network while it runs, and returns the address it listens on
// (HostPort 0 picks a free port).
func (vm *VM) AddHostForward(i int, f HostForward) (stdnet.Addr, error) {
	n, err := vm.UserNet(i)
	if err != nil {
		return nil, err
	}
	return n.AddForward(userForward(f))
}

// RemoveHostForward stops the forward of proto on hostAddr:hostPort
// (empty hostAddr means 127.0.0.1) and closes its connections.
func (vm *VM) RemoveHostForward(i int, proto, hostAddr string, hostPort int) error {
	n, err := vm.UserNet(i)
	if err != nil {
		return err
	}
	return n.RemoveForward(proto, hostAddr, hostPort)
}
