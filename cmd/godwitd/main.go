// Command godwitd is the godwit host daemon: it keeps VM definitions in a
// store under --state-dir, runs each VM in its own godwit process, and
// serves a REST API on a unix socket (--socket) that godwit vm uses. VMs
// keep running when godwitd stops or dies; the next godwitd re-attaches
// to them.
//
//	godwitd --state-dir /var/lib/godwit --socket /run/godwit/godwitd.sock
package main

import (
	"os"

	"github.com/godwit-vm/godwit/daemon"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stderr))
}
