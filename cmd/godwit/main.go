// Command godwit runs virtual machines on /dev/kvm.
//
//	godwit run --kernel bzImage --initrd initrd.cpio --cmdline "console=ttyS0" --cpus 2 --memory 1G
//
// With a terminal on stdin, the guest console takes over the terminal in
// raw mode; press Ctrl-A then X to quit. Errors are one line on stderr and
// a non-zero exit status.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/godwit-vm/godwit/disk/diskcmd"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// usageError marks errors in how godwit was called (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError carries an exit status without a message of its own.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	takeReadyFD()
	os.Exit(recordExit(run(os.Args[1:])))
}

// exitFileEnv names a file godwit writes its exit status to ("0\n") just
// before it exits, for a supervisor that is not its parent (godwitd after
// a restart re-attaches to VMs it did not start, and cannot wait for
// them): no file means godwit did not exit by itself (it was killed).
const exitFileEnv = "GODWIT_EXIT_FILE"

// recordExit writes code to the file exitFileEnv names, if any.
func recordExit(code int) int {
	if exitFile != nil {
		// Opened before a sandbox dropped the uid (sandbox.go).
		fmt.Fprintf(exitFile, "%d\n", code)
		exitFile.Close()
	} else if p := os.Getenv(exitFileEnv); p != "" {
		os.WriteFile(p, []byte(fmt.Sprintf("%d\n", code)), 0o600)
	}
	return code
}

// run executes the CLI and returns the process exit status.
func run(args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(os.Stderr, "godwit: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		return 2
	}
	return 1
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "godwit",
		Short: "godwit runs virtual machines directly on /dev/kvm",
		Long: `godwit is a small, fast virtual machine monitor for Linux guests.

It boots stock Linux kernels on /dev/kvm with a serial console, and is also
a Go library (package github.com/godwit-vm/godwit/vmm) for embedding.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%v (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(newRunCommand(), newRestoreCommand(), newReceiveCommand(), newCtlCommand(), newVMCommand(), newSnapshotCommand(), diskcmd.Command(), newVersionCommand())
	root.CompletionOptions.DisableDefaultCmd = true
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print godwit's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "godwit %s\n", version)
			return nil
		},
	}
}
