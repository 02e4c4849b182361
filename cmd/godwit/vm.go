package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/godwit-vm/godwit/daemon"
	dclient "github.com/godwit-vm/godwit/daemon/client"
)

// godwit vm: manage the VMs of a host through godwitd.

func newVMCommand() *cobra.Command {
	var socket string
	connect := func() *dclient.Client { return dclient.New(socket) }
	cmd := &cobra.Command{
		Use:   "vm COMMAND",
		Short: "Manage the host's VMs through godwitd",
		Long: `Manage the VMs that godwitd (the host daemon) keeps and runs.

  create NAME --kernel FILE [flags]   define a VM (the flags of godwit run, and
                                      --autostart, --restart, --cpu-weight)
  list                                every VM: NAME STATE CPUS MEMORY UPTIME CPU% RSS
  info NAME                           one VM, as JSON
  start|stop|kill|pause|resume NAME   change its state
  delete NAME                         delete a stopped VM
  console NAME                        attach to its serial console (Ctrl-A X detaches)
  snapshot NAME [SNAP]                snapshot it into STATE_DIR/snapshots/NAME/SNAP
  snapshots NAME                      list its snapshots
  restore NAME SNAP                   (re)start it from a snapshot
  events NAME                         its event history
  export NAME FILE                    write its definition and disks into a bundle
  import FILE [--name N]              define a VM from a bundle (checked first)
  template NAME                       make a stopped VM a template (read-only disks)
  clone SRC NEW [--full] [--snapshot SNAP]  a VM on overlays of SRC's disks, or copies

States: running, paused, stopped, starting, failed. Errors are one line on
stderr with exit status 1 (2 for a bad command line).`,
		Example: `  godwitd &
  godwit vm create web --kernel /boot/vmlinuz --initrd /boot/initrd.img --memory 1G --restart on-failure
  godwit vm start web
  godwit vm list
  godwit vm console web`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown vm command %q (see 'godwit vm --help')", args[0])}
			}
			return usageError{fmt.Errorf("godwit vm needs a command (see 'godwit vm --help')")}
		},
	}
	cmd.PersistentFlags().StringVar(&socket, "socket", daemon.DefaultSocket, "godwitd's socket")

	simple := func(use, short string, op func(ctx context.Context, c *dclient.Client, name string) error) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  exactArgs(1, "a VM name"),
			RunE: func(cmd *cobra.Command, args []string) error {
				return op(cmd.Context(), connect(), args[0])
			},
		}
	}
	lifecycle := func(op func(*dclient.Client, context.Context, string) (daemon.VM, error)) func(context.Context, *dclient.Client, string) error {
		return func(ctx context.Context, c *dclient.Client, name string) error {
			_, err := op(c, ctx, name)
			return err
		}
	}
	cmd.AddCommand(
		newVMCreateCommand(connect),
		&cobra.Command{
			Use:   "list",
			Short: "List the VMs",
			Args:  exactArgs(0, ""),
			RunE: func(cmd *cobra.Command, args []string) error {
				vms, err := connect().List(cmd.Context())
				if err != nil {
					return err
				}
				printVMList(cmd.OutOrStdout(), vms)
				return nil
			},
		},
		simple("info", "Print a VM's definition and status (JSON)", func(ctx context.Context, c *dclient.Client, name string) error {
			v, err := c.Get(ctx, name)
			if err != nil {
				return err
			}
			return printJSON(os.Stdout, v)
		}),
		simple("start", "Start a VM", lifecycle((*dclient.Client).Start)),
		simple("stop", "Stop a VM cleanly (and keep it stopped)", lifecycle((*dclient.Client).Stop)),
		simple("kill", "Kill a VM's process (and keep it stopped)", lifecycle((*dclient.Client).Kill)),
		simple("pause", "Pause a VM", lifecycle((*dclient.Client).Pause)),
		simple("resume", "Resume a paused VM", lifecycle((*dclient.Client).Resume)),
		simple("delete", "Delete a stopped VM (its snapshots stay)", func(ctx context.Context, c *dclient.Client, name string) error {
			return c.Delete(ctx, name)
		}),
		simple("events", "Print a VM's event history", func(ctx context.Context, c *dclient.Client, name string) error {
			evs, err := c.Events(ctx, name)
			if err != nil {
				return err
			}
			for _, e := range evs {
				line := e.Time.Local().Format("2006-01-02 15:04:05.000") + "  " + e.Event
				if e.Detail != "" {
					line += "  " + e.Detail
				}
				fmt.Println(line)
			}
			return nil
		}),
		simple("snapshots", "List a VM's snapshots", func(ctx context.Context, c *dclient.Client, name string) error {
			ss, err := c.Snapshots(ctx, name)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED\tSIZE\tDIR")
			for _, s := range ss {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Created.Local().Format("2006-01-02 15:04:05"), formatBytes(uint64(s.Size)), s.Dir)
			}
			return tw.Flush()
		}),
		&cobra.Command{
			Use:   "snapshot NAME [SNAP]",
			Short: "Snapshot a running VM into STATE_DIR/snapshots/NAME/SNAP",
			Args: func(cmd *cobra.Command, args []string) error {
				if len(args) < 1 || len(args) > 2 {
					return usageError{fmt.Errorf("%s needs a VM name and optionally a snapshot name (see '%s --help')", cmd.CommandPath(), cmd.CommandPath())}
				}
				return nil
			},
			RunE: func(cmd *cobra.Command, args []string) error {
				snap := ""
				if len(args) == 2 {
					snap = args[1]
				}
				r, err := connect().Snapshot(cmd.Context(), args[0], snap)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "snapshot %s of %s: %s\n", r.Snapshot.Name, args[0], r.Snapshot.Dir)
				return nil
			},
		},
		newVMRestoreCommand(connect),
		newVMConsoleCommand(connect),
		newVMExportCommand(connect), // vm_export.go
		newVMImportCommand(connect),
		newVMTemplateCommand(connect),
		newVMCloneCommand(connect),
	)
	return cmd
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// printVMList prints the table of godwit vm list.
func printVMList(w io.Writer, vms []daemon.VM) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tCPUS\tMEMORY\tUPTIME\tCPU%\tRSS")
	for _, v := range vms {
		up, cpu, rss := "-", "-", "-"
		if v.PID != 0 {
			up = (time.Duration(v.UptimeSeconds) * time.Second).String()
			cpu = fmt.Sprintf("%.1f", v.CPUPercent)
			rss = formatBytes(v.MemoryRSS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.Name, v.State, v.CPUs, formatBytes(v.Memory), up, cpu, rss)
	}
	tw.Flush()
}

// formatBytes writes a size as godwit's flags take it: 512M, 2G.
func formatBytes(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

func newVMCreateCommand(connect func() *dclient.Client) *cobra.Command {
	var f runFlags
	var def daemon.Definition
	cmd := &cobra.Command{
		Use:   "create NAME --kernel FILE [flags]",
		Short: "Define a VM",
		Long: `Define a VM: what godwit run takes, and how godwitd runs it.

--restart says what happens when the VM's process ends without godwit vm
stop or kill: no (it stays stopped), on-failure (started again when the
process failed: an error, a crash, a kill -9; a guest poweroff is a
success), always (started again however it ended). Restarts wait 1s,
doubling up to 60s, back to 1s after 60s of uptime.

--cpu-weight low|normal|high is cgroup v2 cpu.weight 50/100/200 and
--memory-reservation memory.low, on a cgroup of the VM's own under
godwitd's, where cgroup v2 is writable (godwit vm info says whether they
are applied).`,
		Example: `  godwit vm create web --kernel /boot/vmlinuz --initrd /boot/initrd.img --cpus 2 --memory 1G \
      --disk path=/var/lib/images/web.qcow2 --net user,hostfwd=tcp::8080-:80 --autostart --restart on-failure`,
		Args: exactArgs(1, "a VM name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			def.Name = args[0]
			if err := daemon.CheckName("VM", def.Name); err != nil {
				return usageError{err}
			}
			if f.kernel == "" {
				return usageError{fmt.Errorf("--kernel is required (see 'godwit vm create --help')")}
			}
			var err error
			if def.Kernel, err = filepath.Abs(f.kernel); err != nil {
				return err
			}
			if f.initrd != "" {
				if def.Initrd, err = filepath.Abs(f.initrd); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("cmdline") {
				def.Cmdline = f.cmdline
			}
			if _, err := parseSize(f.memory); err != nil {
				return usageError{err}
			}
			if f.cpus < 1 {
				return usageError{fmt.Errorf("invalid --cpus %d: need at least 1", f.cpus)}
			}
			def.CPUs, def.Memory = f.cpus, f.memory
			for _, d := range f.disks {
				if err := parseVMDiskFlag(d); err != nil { // vm_export.go
					return usageError{err}
				}
				abs, err := absDiskPath(d)
				if err != nil {
					return err
				}
				def.Disks = append(def.Disks, abs)
			}
			for _, n := range f.nets {
				_, fd, err := parseNetSpec(n)
				if err != nil {
					return usageError{err}
				}
				if fd >= 0 {
					return usageError{fmt.Errorf("--net %q: fd= is for godwit run and restore: godwitd opens each VM's TAP itself and passes it in", n)}
				}
				def.Nets = append(def.Nets, n)
			}
			def.RNG, def.SharedMemory = f.rng, f.shared
			if cmd.Flags().Changed("on-reboot") {
				def.OnReboot = f.onReboot
			}
			_, err = connect().Create(cmd.Context(), def)
			return err
		},
	}
	fl := cmd.Flags()
	fl.SortFlags = false
	fl.StringVar(&f.kernel, "kernel", "", "Linux kernel image (bzImage) to boot (required)")
	fl.StringVar(&f.initrd, "initrd", "", "initramfs to load")
	fl.StringVar(&f.cmdline, "cmdline", defaultCmdline, "kernel command line")
	fl.IntVar(&f.cpus, "cpus", 1, "number of vCPUs")
	fl.StringVar(&f.memory, "memory", "512M", "guest memory (suffix K, M, G; a plain number is MiB)")
	fl.StringArrayVar(&f.disks, "disk", nil, "add a virtio-blk disk: path=FILE[,format=raw|qcow2|vmdk|vhdx|vdi][,readonly=on][,serial=S] (repeatable; vmdk, vhdx and vdi are converted once to qcow2)")
	fl.StringArrayVar(&f.nets, "net", nil, "add a virtio-net NIC: tap=NAME[,mac=M], bridge=BR[,mac=M] or user[,...] (repeatable)")
	fl.BoolVar(&f.rng, "rng", false, "add a virtio-rng device")
	fl.BoolVar(&f.shared, "shared-memory", false, "back guest RAM with a memfd")
	fl.StringVar(&f.onReboot, "on-reboot", "exit", "what a guest reboot does: exit or restart")
	fl.BoolVar(&def.Autostart, "autostart", false, "start the VM when godwitd starts")
	fl.StringVar(&def.Restart, "restart", "no", "restart policy: no, on-failure or always")
	fl.StringVar(&def.CPUWeight, "cpu-weight", "normal", "CPU weight: low, normal or high")
	fl.StringVar(&def.MemoryReservation, "memory-reservation", "", "memory protected from reclaim for the VM (cgroup v2 memory.low), such as 256M")
	return cmd
}

// absDiskPath makes a --disk value's path= absolute (godwitd runs VMs
// from /).
func absDiskPath(s string) (string, error) {
	kv, err := parseKeyValues(s)
	if err != nil {
		return "", err
	}
	parts := make([]string, len(kv))
	for i, p := range kv {
		if p[0] == "path" && p[1] != "" {
			abs, err := filepath.Abs(p[1])
			if err != nil {
				return "", err
			}
			p[1] = abs
		}
		if p[1] == "" && !strings.Contains(strings.Split(s, ",")[i], "=") {
			parts[i] = p[0]
		} else {
			parts[i] = p[0] + "=" + p[1]
		}
	}
	return strings.Join(parts, ","), nil
}

func newVMRestoreCommand(connect func() *dclient.Client) *cobra.Command {
	var mem string
	cmd := &cobra.Command{
		Use:   "restore NAME SNAP",
		Short: "Stop a VM if it runs and start it from one of its snapshots",
		Args:  exactArgs(2, "a VM name and a snapshot name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := connect().Restore(cmd.Context(), args[0], daemon.RestoreRequest{Snapshot: args[1], MemoryRestore: mem})
			return err
		},
	}
	cmd.Flags().StringVar(&mem, "memory-restore", "", "how guest memory is loaded: copy (default) or mmap")
	return cmd
}

func newVMConsoleCommand(connect func() *dclient.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a running VM's serial console (Ctrl-A X detaches)",
		Long: `Attach to a running VM's serial console: the guest's output from now on
appears here, and what you type is its input. Ctrl-A X detaches (the VM
runs on); Ctrl-A Ctrl-A sends a literal Ctrl-A. The escape works whether
or not stdin is a terminal; the end of stdin detaches too. The console's
output while nobody is attached is in the VM's console log (godwit vm info
shows its path).`,
		Args: exactArgs(1, "a VM name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return attachConsole(cmd.Context(), connect(), args[0], os.Stdin, os.Stdout, os.Stderr)
		},
	}
}

// attachConsole relays the console of VM name to in and out until Ctrl-A
// X, the end of in, or the end of the VM.
func attachConsole(ctx context.Context, c *dclient.Client, name string, in *os.File, out, msgs io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	conn, err := c.Console(ctx, name)
	if err != nil {
		return err
	}
	defer conn.Close()
	fd := int(in.Fd())
	nl := "\n"
	if term.IsTerminal(fd) {
		st, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("set terminal to raw mode: %w", err)
		}
		defer term.Restore(fd, st)
		nl = "\r\n"
	}
	fmt.Fprintf(msgs, "[attached to %s's console; Ctrl-A X detaches]%s", name, nl)
	var once sync.Once
	ended := make(chan string, 2)
	end := func(why string) {
		once.Do(func() { ended <- why })
	}
	go func() {
		io.Copy(out, conn)
		end("the VM's console closed")
	}()
	go func() {
		buf := make([]byte, 256)
		escaped := false
		for {
			n, err := in.Read(buf)
			var o []byte
			for _, b := range buf[:n] {
				if escaped {
					escaped = false
					switch b {
					case 'x', 'X':
						if len(o) > 0 {
							conn.Write(o)
						}
						end("detached")
						return
					case escapeByte:
						o = append(o, escapeByte)
					}
					continue
				}
				if b == escapeByte {
					escaped = true
					continue
				}
				o = append(o, b)
			}
			if len(o) > 0 {
				if _, werr := conn.Write(o); werr != nil {
					end("the VM's console closed")
					return
				}
			}
			if err != nil {
				end("detached (end of input)")
				return
			}
		}
	}()
	why := <-ended
	fmt.Fprintf(msgs, "%s[%s]%s", nl, why, nl)
	return nil
}
