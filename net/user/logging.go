package user

import (
	"io"
	"sync"

	"github.com/sirupsen/logrus"
)

var quietLogrus sync.Once

// silenceLibraryLogs stops gvisor-tap-vsock's services (DNS, the
// forwarders) from writing to godwit's stderr: they log through logrus's
// global logger, and a VMM's console must stay the guest's. godwit reports
// its own errors through slog.
func silenceLibraryLogs() {
	quietLogrus.Do(func() { logrus.SetOutput(io.Discard) })
}
