package main

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// table prints rows as a Markdown table with padded columns; the first
// column is left-aligned, the others right-aligned.
type table struct {
	rows [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer) {
	if len(t.rows) == 0 {
		return
	}
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 3)
			}
			if n := utf8.RuneCountInString(c); n > width[i] {
				width[i] = n
			}
		}
	}
	line := func(r []string) {
		var b strings.Builder
		b.WriteString("|")
		for i := range width {
			c := ""
			if i < len(r) {
				c = r[i]
			}
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 {
				fmt.Fprintf(&b, " %s%s |", c, pad)
			} else {
				fmt.Fprintf(&b, " %s%s |", pad, c)
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(t.rows[0])
	sep := make([]string, len(width))
	for i := range width {
		if i == 0 {
			sep[i] = ":" + strings.Repeat("-", width[i]-1)
		} else {
			sep[i] = strings.Repeat("-", width[i]-1) + ":"
		}
	}
	var b strings.Builder
	b.WriteString("|")
	for _, s := range sep {
		fmt.Fprintf(&b, " %s |", s)
	}
	fmt.Fprintln(w, b.String())
	for _, r := range t.rows[1:] {
		line(r)
	}
}
