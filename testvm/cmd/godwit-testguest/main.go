// Command godwit-testguest prepares a Linux test guest: Debian's cloud
// kernel (downloaded once into the cache) and a busybox initramfs whose
// /init runs the given shell commands and powers off. It prints the two
// paths, so scripts can boot the guest with any VMM:
//
//	eval "$(godwit-testguest -commands 'uname -a')"
//	godwit run --kernel "$KERNEL" --initrd "$INITRD"
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/godwit-vm/godwit/testvm"
)

func main() {
	commands := flag.String("commands", "", "shell commands the guest's /init runs before powering off")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: godwit-testguest [-commands SHELL]\n\nPrints KERNEL=... and INITRD=... for a busybox test guest on Debian's cloud kernel.")
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := testvm.LinuxKernel(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "godwit-testguest:", err)
		os.Exit(1)
	}
	initrd, err := testvm.InitramfsFile(testvm.InitramfsOptions{Modules: k.Modules, Commands: *commands, Gzip: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "godwit-testguest:", err)
		os.Exit(1)
	}
	fmt.Printf("KERNEL=%s\nINITRD=%s\n", k.Vmlinuz, initrd)
}
