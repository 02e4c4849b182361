package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/godwit-vm/godwit/vmm"
)

// newSnapshotCommand is godwit snapshot: offline operations on snapshot
// directories.
func newSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Work with snapshot directories",
	}
	merge := &cobra.Command{
		Use:   "merge SNAPSHOT OUT",
		Short: "Flatten a diff snapshot and its parents into one full snapshot",
		Long: `Flatten the diff snapshot SNAPSHOT and its chain of parents into a full
snapshot in OUT (which must not exist or be empty). OUT restores to exactly
the same VM as SNAPSHOT and no longer needs the parents' directories; the
disk images it refers to are the same.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{fmt.Errorf("snapshot merge takes SNAPSHOT and OUT (see 'godwit snapshot merge --help')")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmm.MergeSnapshot(args[0], args[1])
		},
	}
	cmd.AddCommand(merge)
	return cmd
}
