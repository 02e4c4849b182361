package report

import "testing"

func TestParseMiB(t *testing.T) {
	for s, want := range map[string]int{"256M": 256, "1G": 1024, " 2g ": 2048, "64": 64} {
		if n, err := ParseMiB(s); n != want || err != nil {
			t.Errorf("ParseMiB(%q) = %d, %v; want %d", s, n, err, want)
		}
	}
	for _, s := range []string{"", "0", "-1G", "1T"} {
		if _, err := ParseMiB(s); err == nil {
			t.Errorf("ParseMiB(%q): no error", s)
		}
	}
	if got := SizeName(1024); got != "1 GiB" {
		t.Errorf("SizeName(1024) = %q", got)
	}
	if got := SizeName(1536); got != "1536 MiB" {
		t.Errorf("SizeName(1536) = %q", got)
	}
}

func TestSummary(t *testing.T) {
	s := Summarize([]float64{30, 10, 20, 40}, 5)
	if s.N != 4 || s.Of != 5 || s.Med != 25 || s.Min != 10 || s.Max != 40 {
		t.Errorf("Summarize = %+v", s)
	}
	if got, want := s.Cell("ms"), "25.0 ms (10.0–40.0) [4/5 ok]"; got != want {
		t.Errorf("Cell = %q, want %q", got, want)
	}
	none := Summarize(nil, 3)
	if got := none.Cell("ms"); got != "FAILED (0/3)" {
		t.Errorf("Cell = %q", got)
	}
	if got := (Summary{}).Cell(""); got != "—" {
		t.Errorf("Cell = %q", got)
	}
	b := Summarize([]float64{100}, 1)
	if got := Ratio(s, b); got != "0.250×" {
		t.Errorf("Ratio = %q", got)
	}
	if got := Ratio(none, b); got != "—" {
		t.Errorf("Ratio = %q", got)
	}
	if Met(s, b, 0.5) != "yes" || Met(s, b, 0.1) != "NO" || Met(none, b, 1) != "n/a" {
		t.Errorf("Met = %q %q %q", Met(s, b, 0.5), Met(s, b, 0.1), Met(none, b, 1))
	}
}
