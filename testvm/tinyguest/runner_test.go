// Copyright 2025 The godwit Authors.

package tinyguest

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestRunHandlers(t *testing.T) {
	m := NewMachine(t, Config{})
	for _, tc := range []struct {
		name    string
		code    []byte
		h       func(outs *[]uint16) Handler
		wantErr string // "" for nil
		want    []uint16
	}{
		{
			name: "halt",
			code: CountTo(Origin, 3, 0x81),
			h:    func(outs *[]uint16) Handler { return Handler{Out: collect(outs, 0)} },
			want: []uint16{1, 2, 3},
		},
		{
			name: "done stops early",
			code: CountTo(Origin, 1000, 0x81),
			h:    func(outs *[]uint16) Handler { return Handler{Out: collect(outs, 2)} },
			want: []uint16{1, 2},
		},
		{
			name:    "exit limit",
			code:    CountTo(Origin, 1000, 0x81),
			h:       func(outs *[]uint16) Handler { return Handler{Out: collect(outs, 0), MaxExits: 5} },
			wantErr: "more than 5 exits",
			want:    []uint16{1, 2, 3, 4, 5},
		},
		{
			name: "handler error",
			code: CountTo(Origin, 1000, 0x81),
			h: func(outs *[]uint16) Handler {
				return Handler{Out: func(uint16, []byte) error { return errors.New("device on fire") }}
			},
			wantErr: "device on fire",
		},
		{
			name: "default IN reads 0xFF",
			code: InAddOut(Origin, 0x510, 0x511, 1),
			h:    func(outs *[]uint16) Handler { return Handler{Out: collect(outs, 0)} },
			want: []uint16{0}, // 0xFFFF + 1
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := m.LoadAndStart(Origin, tc.code); err != nil {
				t.Fatal(err)
			}
			var outs []uint16
			err := m.Run(context.Background(), 0, tc.h(&outs))
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Run = %v, want error %q", err, tc.wantErr)
			}
			if tc.want != nil && !slices.Equal(outs, tc.want) {
				t.Errorf("outputs %v, want %v", outs, tc.want)
			}
		})
	}
}

// collect appends each word written and returns Done after stopAfter
// words (0: never).
func collect(outs *[]uint16, stopAfter int) func(uint16, []byte) error {
	return func(_ uint16, d []byte) error {
		*outs = append(*outs, binary.LittleEndian.Uint16(d))
		if stopAfter > 0 && len(*outs) == stopAfter {
			return Done
		}
		return nil
	}
}

func TestMachineErrors(t *testing.T) {
	sys := RequireKVM(t)
	if _, err := New(sys, Config{MemSize: 4097}); err == nil {
		t.Error("New with an unaligned memory size succeeded")
	}
	m := NewMachine(t, Config{MemSize: 8192})
	if err := m.Load(8000, make([]byte, 200)); err == nil {
		t.Error("Load past the end of RAM succeeded")
	}
	if err := m.Load(1<<62, []byte{1}); err == nil {
		t.Error("Load at a huge address succeeded")
	}
	if err := m.StartRealMode(1, Origin); err == nil {
		t.Error("StartRealMode of a missing vCPU succeeded")
	}
	if err := m.Run(context.Background(), -1, Handler{}); err == nil {
		t.Error("Run of a missing vCPU succeeded")
	}
}
