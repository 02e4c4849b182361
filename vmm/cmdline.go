package vmm

// DefaultCmdline is the kernel command line godwit run uses unless told
// otherwise: a serial console and a fast boot on godwit's machine (see
// bench/boot/RESULTS.md for what each part saves). Every parameter only
// skips work for hardware godwit does not emulate or output nobody reads:
//
//   - console=ttyS0: the kernel console on COM1, godwit's serial port.
//   - reboot=k: reboot through the i8042 reset line, which godwit
//     emulates (no BIOS or EFI to call).
//   - panic=1: reboot one second after a panic instead of hanging; with
//     godwit run's default --on-reboot=exit that ends the VMM.
//   - quiet: print only warnings and errors during boot. Each console byte
//     is a trapped port write to the emulated UART (plus status reads);
//     the ~30 KB of a normal boot log cost 15 s in the nested harness and
//     tens of milliseconds on bare-metal KVM. dmesg still has it all.
//   - 8250.nr_uarts=1: register only ttyS0. By default the 8250 driver
//     registers four ports and probes the legacy addresses 0x2f8, 0x3e8
//     and 0x2e8, where godwit has no device.
//   - no_timer_check: skip the IO-APIC timer self-test, which waits for
//     PIT ticks to check an interrupt route that KVM's in-kernel IO-APIC
//     always provides.
//   - cryptomgr.notests: skip the crypto self-tests the kernel otherwise
//     runs for every algorithm it registers at boot (Debian's kernels are
//     built with them on). They test the kernel's own code, not the VM.
const DefaultCmdline = "console=ttyS0 reboot=k panic=1 quiet 8250.nr_uarts=1 no_timer_check cryptomgr.notests"
