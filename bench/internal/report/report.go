// Package report holds what the benchmarks share to read guest sizes and
// to summarize and print their runs (bench/migrate, bench/snapshot).
package report

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// ParseMiB reads a size in MiB, with an optional M or G suffix.
func ParseMiB(s string) (int, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	mul := 1
	switch {
	case strings.HasSuffix(s, "G"):
		mul, s = 1024, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		s = strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mul, nil
}

// SizeName writes a size in MiB, in GiB where it is whole GiBs.
func SizeName(mib int) string {
	if mib%1024 == 0 {
		return fmt.Sprintf("%d GiB", mib/1024)
	}
	return fmt.Sprintf("%d MiB", mib)
}

// Summary is the median, minimum and maximum of the successful samples
// out of Of runs.
type Summary struct {
	N, Of         int
	Med, Min, Max float64
}

// Summarize summarizes the samples ok of the successful runs out of of;
// it sorts ok.
func Summarize(ok []float64, of int) Summary {
	s := Summary{Of: of, Med: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	if len(ok) == 0 {
		return s
	}
	sort.Float64s(ok)
	n := len(ok)
	s.N, s.Min, s.Max, s.Med = n, ok[0], ok[n-1], ok[n/2]
	if n%2 == 0 {
		s.Med = (ok[n/2-1] + ok[n/2]) / 2
	}
	return s
}

// Cell formats a summary: median (min–max) in the unit, and the success
// count when some runs failed.
func (s Summary) Cell(unit string) string {
	if s.Of == 0 {
		return "—"
	}
	if s.N == 0 {
		return fmt.Sprintf("FAILED (0/%d)", s.Of)
	}
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', prec(x), 64) }
	out := fmt.Sprintf("%s %s (%s–%s)", f(s.Med), unit, f(s.Min), f(s.Max))
	if s.N < s.Of {
		out += fmt.Sprintf(" [%d/%d ok]", s.N, s.Of)
	}
	return out
}

func prec(x float64) int {
	switch {
	case x >= 100:
		return 0
	case x >= 10:
		return 1
	}
	return 2
}

// Ratio is a's median over b's, or "—" where either has no sample.
func Ratio(a, b Summary) string {
	if a.N == 0 || b.N == 0 {
		return "—"
	}
	return fmt.Sprintf("%.3f×", a.Med/b.Med)
}

// Met compares medians: a ≤ k·b.
func Met(a, b Summary, k float64) string {
	switch {
	case a.N == 0 || b.N == 0:
		return "n/a"
	case a.Med <= k*b.Med:
		return "yes"
	}
	return "NO"
}

// KernelRelease is the host's kernel, as "Linux RELEASE".
func KernelRelease() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "?"
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return "Linux " + b.String()
}
