// Package diskcmd is `godwit disk`: image tools shaped like qemu-img.
package diskcmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/godwit-vm/godwit/disk"
)

// Command returns the `disk` command with its subcommands.
func Command() *cobra.Command {
	root := &cobra.Command{
		Use:           "disk",
		Short:         "Create, inspect and convert disk images (raw, qcow2)",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(createCmd(), infoCmd(), snapshotCmd(), commitCmd(), rebaseCmd(),
		convertCmd(), checkCmd(), mapCmd(), overlayCmd(), revertCmd())
	return root
}

// ParseSize parses sizes like 4096, 512K, 10G, 1.5T (binary units; an
// optional trailing B or iB).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	if t == "" {
		return 0, fmt.Errorf("bad size %q", s)
	}
	mult := int64(1)
	switch t[len(t)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	case 't', 'T':
		mult = 1 << 40
	case 'p', 'P':
		mult = 1 << 50
	}
	if mult != 1 {
		t = t[:len(t)-1]
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 0 || n > (1<<62)/mult {
			return 0, fmt.Errorf("size %q out of range", s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return int64(f * float64(mult)), nil
}

// progress returns a progress callback drawing a bar on stderr when it is a
// terminal, and nil (quiet) otherwise.
func progress(cmd *cobra.Command, what string) (disk.Progress, func()) {
	w := cmd.ErrOrStderr()
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, func() {}
	}
	var bar *progressbar.ProgressBar
	return func(done, total int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(w),
					progressbar.OptionSetDescription(what), progressbar.OptionShowBytes(true),
					progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
			}
			bar.Set64(done)
		}, func() {
			if bar != nil {
				bar.Finish()
			}
		}
}

func createCmd() *cobra.Command {
	var format, backing, backingFmt, clusterSize, compression string
	var version int
	c := &cobra.Command{
		Use:   "create [-f qcow2|raw] [-b BACKING [-F FMT]] FILE [SIZE]",
		Short: "Create an image",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := disk.CreateOptions{Format: format, Backing: backing, BackingFormat: backingFmt, Version: version, Compression: compression}
			if len(args) == 2 {
				n, err := ParseSize(args[1])
				if err != nil {
					return err
				}
				opts.Size = n
			} else if backing == "" {
				return errors.New("create: a SIZE is needed without a backing file")
			}
			if clusterSize != "" {
				n, err := ParseSize(clusterSize)
				if err != nil {
					return err
				}
				opts.ClusterSize = n
			}
			if err := disk.Create(args[0], opts); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Formatting '%s', fmt=%s size=%d\n", args[0], orDefault(format, "qcow2"), opts.Size)
			return nil
		},
	}
	c.Flags().StringVarP(&format, "format", "f", "qcow2", "image format: qcow2 or raw")
	c.Flags().StringVarP(&backing, "backing", "b", "", "backing file (relative to the new image's folder)")
	c.Flags().StringVarP(&backingFmt, "backing-format", "F", "", "backing file format (default: detect)")
	c.Flags().StringVar(&clusterSize, "cluster-size", "", "qcow2 cluster size (512 to 2M, default 64K)")
	c.Flags().IntVar(&version, "version", 3, "qcow2 version: 2 or 3")
	c.Flags().StringVar(&compression, "compression", "", "compression type for compressed clusters: zlib or zstd")
	return c
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func infoCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "info [--json] FILE",
		Short: "Show an image's format, sizes and backing chain",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			inf, err := disk.ImageInfo(args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "    ")
				return enc.Encode(inf)
			}
			for i := inf; i != nil; i = i.Backing {
				if i != inf {
					fmt.Fprintln(out)
				}
				printInfo(out, i)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func printInfo(w io.Writer, i *disk.Info) {
	fmt.Fprintf(w, "image: %s\nfile format: %s\nvirtual size: %s (%d bytes)\ndisk size: %s\n",
		i.Filename, i.Format, human(i.VirtualSize), i.VirtualSize, human(i.ActualSize))
	if i.ClusterSize != 0 {
		fmt.Fprintf(w, "cluster_size: %d\n", i.ClusterSize)
	}
	if i.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s (actual path: %s)\n", i.BackingFilename, i.FullBackingFilename)
		if i.BackingFormat != "" {
			fmt.Fprintf(w, "backing file format: %s\n", i.BackingFormat)
		}
	}
	if len(i.Snapshots) > 0 {
		fmt.Fprintln(w, "Snapshot list:")
		printSnapshots(w, i.Snapshots)
	}
}

func printSnapshots(w io.Writer, snaps []disk.SnapshotInfo) {
	fmt.Fprintf(w, "%-4s %-20s %10s %-19s\n", "ID", "TAG", "VM SIZE", "DATE")
	for _, s := range snaps {
		fmt.Fprintf(w, "%-4s %-20s %10s %-19s\n", s.ID, s.Name, human(int64(s.VMStateSize)), s.Date.Format("2006-01-02 15:04:05"))
	}
}

func human(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	u := 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	if u == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.3g %s", f, units[u])
}

func openQcow2(path string, readOnly bool) (*disk.Qcow2, error) {
	img, err := disk.Open(path, disk.OpenOptions{ReadOnly: readOnly, NoBacking: true})
	if err != nil {
		return nil, err
	}
	q, ok := img.(*disk.Qcow2)
	if !ok {
		img.Close()
		return nil, fmt.Errorf("%s: internal snapshots need a qcow2 image", path)
	}
	return q, nil
}

func snapshotCmd() *cobra.Command {
	var create, apply, del string
	var list bool
	c := &cobra.Command{
		Use:   "snapshot -c|-l|-a|-d [NAME] FILE",
		Short: "Create, list, apply or delete internal snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 0
			for _, set := range []bool{create != "", apply != "", del != "", list} {
				if set {
					n++
				}
			}
			if n != 1 {
				return errors.New("snapshot: give exactly one of -c, -l, -a, -d")
			}
			q, err := openQcow2(args[0], list)
			if err != nil {
				return err
			}
			switch {
			case list:
				printSnapshots(cmd.OutOrStdout(), q.Snapshots())
			case create != "":
				err = q.CreateSnapshot(create)
			case apply != "":
				err = q.ApplySnapshot(apply)
			case del != "":
				err = q.DeleteSnapshot(del)
			}
			if cerr := q.Close(); err == nil {
				err = cerr
			}
			return err
		},
	}
	c.Flags().StringVarP(&create, "create", "c", "", "create snapshot NAME")
	c.Flags().StringVarP(&apply, "apply", "a", "", "revert the disk to snapshot NAME")
	c.Flags().StringVarP(&del, "delete", "d", "", "delete snapshot NAME")
	c.Flags().BoolVarP(&list, "list", "l", false, "list snapshots")
	return c
}

func commitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "commit FILE",
		Short: "Merge an overlay into its backing image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, done := progress(cmd, "commit")
			defer done()
			if err := disk.Commit(args[0], p); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Image committed.")
			return nil
		},
	}
}

func rebaseCmd() *cobra.Command {
	var backing, backingFmt string
	var unsafe bool
	c := &cobra.Command{
		Use:   "rebase -b NEWBACKING [-F FMT] [-u] FILE",
		Short: "Change an image's backing file, keeping its contents (unless -u)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("backing") {
				return errors.New("rebase: -b NEWBACKING is required (use -b '' for none)")
			}
			p, done := progress(cmd, "rebase")
			defer done()
			return disk.Rebase(args[0], backing, backingFmt, unsafe, p)
		},
	}
	c.Flags().StringVarP(&backing, "backing", "b", "", "new backing file ('' for none)")
	c.Flags().StringVarP(&backingFmt, "backing-format", "F", "", "new backing file format")
	c.Flags().BoolVarP(&unsafe, "unsafe", "u", false, "only rewrite the backing file name")
	return c
}

func convertCmd() *cobra.Command {
	var format, clusterSize string
	var compress bool
	c := &cobra.Command{
		Use:   "convert [-O raw|qcow2] [-c] SRC DST",
		Short: "Copy an image into a new one (sparse, optionally compressed)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := disk.ConvertOptions{Format: format, Compress: compress}
			if clusterSize != "" {
				n, err := ParseSize(clusterSize)
				if err != nil {
					return err
				}
				opts.ClusterSize = n
			}
			p, done := progress(cmd, "convert")
			defer done()
			return disk.Convert(args[0], args[1], opts, p)
		},
	}
	c.Flags().StringVarP(&format, "output-format", "O", "qcow2", "output format: raw or qcow2")
	c.Flags().BoolVarP(&compress, "compress", "c", false, "compress qcow2 clusters")
	c.Flags().StringVar(&clusterSize, "cluster-size", "", "qcow2 cluster size")
	return c
}

func checkCmd() *cobra.Command {
	var repair string
	var asJSON bool
	c := &cobra.Command{
		Use:   "check [-r leaks] FILE",
		Short: "Check an image's metadata (and repair leaked clusters)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if repair != "" && repair != "leaks" {
				return fmt.Errorf("check: -r %q: only leaks can be repaired", repair)
			}
			res, err := disk.Check(args[0], repair == "leaks")
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "    ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else {
				for _, e := range res.Errors {
					fmt.Fprintln(out, e)
				}
				if res.LeaksFixed > 0 {
					fmt.Fprintf(out, "Repaired %d leaked clusters.\n", res.LeaksFixed)
				}
				if res.Leaks == 0 && res.Corruptions == 0 {
					fmt.Fprintln(out, "No errors were found on the image.")
				} else {
					fmt.Fprintf(out, "%d leaked clusters, %d corruptions.\n", res.Leaks, res.Corruptions)
				}
			}
			if res.Corruptions > 0 {
				return fmt.Errorf("%s: %d corruptions", args[0], res.Corruptions)
			}
			if res.Leaks > 0 {
				return fmt.Errorf("%s: %d leaked clusters (repair with -r leaks)", args[0], res.Leaks)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&repair, "repair", "r", "", "repair: leaks")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func mapCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "map [--json] FILE",
		Short: "Show which ranges are allocated, and where",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := disk.Open(args[0], disk.OpenOptions{ReadOnly: true, NoLock: true})
			if err != nil {
				return err
			}
			defer img.Close()
			m, ok := img.(disk.Mapper)
			if !ok {
				return errors.New("map: the image cannot report allocation")
			}
			ext, err := m.Map(0, img.Size())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				return enc.Encode(ext)
			}
			fmt.Fprintf(out, "%-18s %-18s %-6s %-5s %-5s %s\n", "Offset", "Length", "Depth", "Data", "Zero", "Mapped to")
			for _, e := range ext {
				mapped := "-"
				if e.Offset >= 0 {
					mapped = fmt.Sprintf("%#x", e.Offset)
				} else if e.Compressed {
					mapped = "compressed"
				}
				fmt.Fprintf(out, "%-#18x %-#18x %-6d %-5t %-5t %s\n", e.Start, e.Length, e.Depth, e.Data, e.Zero, mapped)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func overlayCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "overlay BASE NEW",
		Short: "Create a qcow2 overlay NEW on top of BASE (an external snapshot)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return disk.Overlay(args[0], args[1])
		},
	}
}

func revertCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revert OVERLAY",
		Short: "Discard everything written to an overlay",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return disk.Revert(args[0])
		},
	}
}
