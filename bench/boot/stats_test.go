package main

import (
	"math"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in            []float64
		med, min, max float64
	}{
		{[]float64{3, 1, 2}, 2, 1, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
		{[]float64{7}, 7, 7, 7},
	} {
		s := summarize(tc.in)
		if s.Med != tc.med || s.Min != tc.min || s.Max != tc.max || s.N != len(tc.in) {
			t.Errorf("summarize(%v) = %+v, want med %v min %v max %v", tc.in, s, tc.med, tc.min, tc.max)
		}
	}
	if s := summarize(nil); s.N != 0 || !math.IsNaN(s.Med) {
		t.Errorf("summarize(nil) = %+v", s)
	}
}

func TestMarkerScanner(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		want   int // index of the chunk that completes the marker, -1: never
	}{
		{[]string{"boot\nGODWIT-INIT-OK\n"}, 0},
		{[]string{"GODWIT-IN", "IT-OK"}, 1},
		{[]string{"G", "O", "D", "W", "I", "T", "-INIT-OK"}, 6},
		{[]string{"GODWIT-INIT", "-O", "X"}, -1},
		{[]string{"godwit-init-ok"}, -1},
	} {
		m := markerScanner{marker: []byte("GODWIT-INIT-OK")}
		got := -1
		for i, c := range tc.chunks {
			if m.feed([]byte(c)) {
				got = i
				break
			}
		}
		if got != tc.want {
			t.Errorf("chunks %q: marker found at chunk %d, want %d", tc.chunks, got, tc.want)
		}
	}
}

const smapsSample = `00400000-00a00000 r-xp 00000000 08:01 1234                               /work/bin/godwit
Size:               6144 kB
Rss:                4096 kB
Pss:                4096 kB
7f0000000000-7f0008000000 rw-s 00000000 00:01 99                         /memfd:godwit-guest-ram (deleted)
Size:             131072 kB
Rss:               40960 kB
Shared_Clean:          0 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0 
Size:               1024 kB
Rss:                 512 kB
VmFlags: rd wr mr mw me ac sd
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
`

const statusSample = `Name:	godwit
VmPeak:	 1000000 kB
VmRSS:	   45584 kB
RssAnon:	     528 kB
RssFile:	    4096 kB
RssShmem:	   40960 kB
Threads:	7
`

func TestMemUsage(t *testing.T) {
	var m memUsage
	if err := parseStatus(strings.NewReader(statusSample), &m); err != nil {
		t.Fatal(err)
	}
	if err := parseSmaps(strings.NewReader(smapsSample), godwitKind("godwit").isGuest, &m); err != nil {
		t.Fatal(err)
	}
	want := memUsage{RSS: 45584 << 10, Anon: 528 << 10, File: 4096 << 10, Shmem: 40960 << 10, GuestRSS: 40960 << 10, GuestMappings: 1}
	if m != want {
		t.Errorf("got %+v, want %+v", m, want)
	}
	if got := m.Overhead(); got != (45584-40960)<<10 {
		t.Errorf("overhead %d, want %d", got, (45584-40960)<<10)
	}
	if err := parseStatus(strings.NewReader("Name:\tx\n"), &m); err == nil {
		t.Error("status without VmRSS accepted")
	}
	if err := parseStatus(strings.NewReader("VmRSS:\t12 MB\n"), &m); err == nil {
		t.Error("VmRSS in MB accepted")
	}
}

func TestIsMappingHeader(t *testing.T) {
	for line, want := range map[string]bool{
		"7f0000000000-7f0008000000 rw-s 00000000 00:01 99 /memfd:x (deleted)": true,
		"7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0":                     true,
		"Rss:                4096 kB":                                         false,
		"VmFlags: rd wr mr mw me ac sd":                                       false,
		"zz-7f rw-p 0 0 0":                                                    false,
	} {
		if got := isMappingHeader(line); got != want {
			t.Errorf("isMappingHeader(%q) = %v, want %v", line, got, want)
		}
	}
}

func TestDefaultCmdline(t *testing.T) {
	help := `Usage:
  godwit run --kernel vmlinuz --cmdline "console=ttyS0 root=/dev/vda"
      --cmdline string     kernel command line (default "console=ttyS0 quiet")
`
	got, err := defaultCmdline(help)
	if err != nil || got != "console=ttyS0 quiet" {
		t.Errorf("defaultCmdline = %q, %v", got, err)
	}
	if _, err := defaultCmdline("no flags here"); err == nil {
		t.Error("help without --cmdline accepted")
	}
}
