package daemon

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/godwit-vm/godwit/net/tap"
)

// firstExtraFD is the descriptor number of the first TAP among a
// child's exec.Cmd.ExtraFiles: fd 3 is the ready pipe (launch).
const firstExtraFD = 4

// openTAPs opens the TAP of each tap= or bridge= NIC of nets as godwit
// would itself (an existing TAP by name, or a new one, attached to its
// bridge, and up), so that the VM process needs no privilege for it. It
// returns the --net values to give godwit, which pass each TAP in as a
// descriptor (fd=N, N counting from firstExtraFD in the order of files),
// and the files for exec.Cmd.ExtraFiles. The caller closes the TAPs once
// the VM process has started: from then on the process holds the only
// descriptor, and a TAP godwitd created disappears when the VM ends.
func openTAPs(nets []string) (args []string, taps []*tap.Tap, files []*os.File, err error) {
	for i, s := range nets {
		if s == "user" || strings.HasPrefix(s, "user,") {
			args = append(args, s)
			continue
		}
		spec := parseDiskSpec(s)
		name, bridge := spec.get("tap"), spec.get("bridge")
		if name == "" && bridge == "" {
			// godwit says what is wrong with it.
			args = append(args, s)
			continue
		}
		t, err := tap.Open(tap.Options{Name: name, Bridge: bridge, Up: true})
		if err != nil {
			closeTAPs(taps)
			return nil, nil, nil, fmt.Errorf("net %d: %w", i, err)
		}
		taps = append(taps, t)
		files = append(files, t.File())
		args = append(args, s+",fd="+strconv.Itoa(firstExtraFD+len(files)-1))
	}
	return args, taps, files, nil
}

func closeTAPs(taps []*tap.Tap) {
	for _, t := range taps {
		t.Close()
	}
}

// hasFDKey reports whether a --net value has an fd= key, which only
// godwitd itself adds (a definition names its TAP or bridge).
func hasFDKey(s string) bool {
	for _, kv := range strings.Split(s, ",") {
		if k, _, _ := strings.Cut(kv, "="); k == "fd" {
			return true
		}
	}
	return false
}
