package disk

import (
	"fmt"
	"os"
)

const qcow2Magic = "QFI\xfb"

// openQcow2 is replaced by the full implementation in the following commits.
func openQcow2(f *os.File, path string, opts OpenOptions, depth int, seen []os.FileInfo) (Image, error) {
	return nil, fmt.Errorf("qcow2: %w: not implemented yet", ErrUnsupported)
}
