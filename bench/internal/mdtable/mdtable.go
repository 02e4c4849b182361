// Package mdtable prints the benchmarks' Markdown tables.
package mdtable

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Table prints rows as a Markdown table; the first row is the header, the
// first column is left-aligned and the others right-aligned.
type Table struct{ rows [][]string }

// Add appends a row.
func (t *Table) Add(cells ...string) { t.rows = append(t.rows, cells) }

// Write prints the table.
func (t *Table) Write(w io.Writer) {
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 3)
			}
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for n, r := range t.rows {
		var b strings.Builder
		for i := range width {
			c := ""
			if i < len(r) {
				c = r[i]
			}
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 {
				fmt.Fprintf(&b, "| %s%s ", c, pad)
			} else {
				fmt.Fprintf(&b, "| %s%s ", pad, c)
			}
		}
		fmt.Fprintln(w, b.String()+"|")
		if n == 0 {
			b.Reset()
			for i, wd := range width {
				if i == 0 {
					fmt.Fprintf(&b, "| :%s ", strings.Repeat("-", wd-1))
				} else {
					fmt.Fprintf(&b, "| %s: ", strings.Repeat("-", wd-1))
				}
			}
			fmt.Fprintln(w, b.String()+"|")
		}
	}
}
