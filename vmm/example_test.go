package vmm_test

import (
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/godwit-vm/godwit/vmm"
)

// Example boots a Linux kernel with its console on stdout, stops it on
// Ctrl-C, and reports why it ended. It needs a kernel, so it is compiled
// by go test but not run; the tiny-guest tests in this package run the
// same calls.
func Example() {
	vm, err := vmm.New(vmm.Config{
		Kernel:  "bzImage",
		Initrd:  "initrd.cpio.gz",
		Cmdline: "console=ttyS0 reboot=k panic=-1",
		CPUs:    2,
		Memory:  512 << 20,
		Console: os.Stdout,
		Input:   os.Stdin,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Close()

	interrupt := make(chan os.Signal, 1)
	signal.Notify(interrupt, os.Interrupt)
	defer signal.Stop(interrupt)

	if err := vm.Start(); err != nil {
		log.Fatal(err)
	}
	select {
	case <-vm.Done():
	case <-interrupt:
		vm.Stop()
	}
	exit := vm.Wait()
	switch exit.Reason {
	case vmm.ExitPowerOff, vmm.ExitStopped:
		fmt.Println("guest stopped:", exit.Reason)
	case vmm.ExitReset:
		fmt.Println("guest rebooted")
	default:
		log.Fatalf("guest failed: %v (%v)", exit.Reason, exit.Err)
	}
}

// ExampleVM_Pause freezes a running guest: once Pause returns no guest
// code runs, and Resume continues where it stopped.
func ExampleVM_Pause() {
	vm, err := vmm.New(vmm.Config{Kernel: "bzImage", Console: os.Stdout})
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Close()
	if err := vm.Start(); err != nil {
		log.Fatal(err)
	}
	if err := vm.Pause(); err != nil {
		log.Fatal(err)
	}
	// Inspect or copy vm.Memory() here: the guest cannot change it.
	if err := vm.Resume(); err != nil {
		log.Fatal(err)
	}
	vm.Stop()
	fmt.Println(vm.Wait().Reason)
}
