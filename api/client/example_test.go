package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/vmm"
)

// An appliance builder boots a VM with godwit run --api /run/godwit/web.sock,
// waits for it to come up, and snapshots it paused, so that every clone
// restored from the snapshot starts from the same instant.
func Example() {
	c := client.New("/run/godwit/web.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	info, err := c.Info(ctx)
	if errors.Is(err, client.ErrNotListening) {
		log.Fatal(err) // "no VM is listening on /run/godwit/web.sock: ..."
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println("VM is", info.State, "with", info.Memory>>20, "MiB")

	if err := c.Pause(ctx); errors.Is(err, client.ErrConflict) {
		// Not running (already paused, say): the message says why.
		log.Print(err)
	} else if err != nil {
		log.Fatal(err)
	}
	res, err := c.Snapshot(ctx, client.SnapshotRequest{
		Dir:         "/var/lib/appliance/web-base", // absolute, absent or empty
		Type:        vmm.SnapshotFull,
		Disks:       vmm.DisksOverlay,
		LeavePaused: true,
	})
	if err != nil {
		var apiErr *client.Error
		if errors.As(err, &apiErr) {
			log.Fatalf("snapshot refused (%d): %s", apiErr.StatusCode, apiErr.Message)
		}
		log.Fatal(err)
	}
	fmt.Printf("wrote %d of %d bytes; guest paused %v\n", res.WrittenBytes, res.MemoryBytes, res.Paused)
	if err := c.Stop(ctx); err != nil {
		log.Fatal(err)
	}
}
