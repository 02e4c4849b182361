package net_test

import (
	"encoding/binary"
	stdnet "net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/net/tap"
	"github.com/godwit-vm/godwit/net/tap/taptest"
	"github.com/godwit-vm/godwit/virtio"
	vnet "github.com/godwit-vm/godwit/virtio/net"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

// Benchmarks of the device's per-frame cost over a real TAP in a fresh
// network namespace, driven by the test driver (no KVM). The driver side
// behaves like Linux with EVENT_IDX: it kicks only when avail_event asks
// for it and, after an interrupt, consumes every used element before
// asking for the next one (used_event = last consumed). Reported:
// ns/frame (wall), cpu-ns/frame (whole process, user+system: device,
// kernel TAP work and the benchmark's own driver/socket side, which is
// the same before and after device changes), kicks/frame and
// wakeups/frame (interrupts the driver waited for).

const benchBatch = 64

var fence atomic.Uint64

type benchNet struct {
	m    *vt.Machine
	d    *vnet.Device
	qs   []*vt.Queue
	tp   *tap.Tap
	kick int
	wake int
}

func cpuNow() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func setupBench(b *testing.B, name string, features uint64) *benchNet {
	tp, err := tap.Open(tap.Options{Name: name})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tp.Close() })
	// No IPv6 chatter on the link: every frame is the benchmark's.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0); err != nil && !os.IsNotExist(err) {
		b.Fatal(err)
	}
	taptest.AddAddr(b, name, "192.0.2.1/24")
	be, err := vnet.NewTapBackend(tp)
	if err != nil {
		b.Fatal(err)
	}
	d, err := vnet.New(be, guestMAC)
	if err != nil {
		b.Fatal(err)
	}
	m := vt.NewMachine(b, d)
	qs := m.Queues(b, 256)
	if err := m.Dev.Init(features|virtio.FRingEventIdx|virtio.FRingIndirectDesc, qs, true); err != nil {
		b.Fatal(err)
	}
	return &benchNet{m: m, d: d, qs: qs, tp: tp}
}

// publish makes heads available and kicks queue i when avail_event asks
// for it (vring_need_event).
func (n *benchNet) publish(b *testing.B, i int, heads []uint16) {
	q := n.qs[i]
	old, _ := q.Mem.Uint16(q.Avail + 2)
	for _, h := range heads {
		if err := q.Publish(h); err != nil {
			b.Fatal(err)
		}
	}
	now := old + uint16(len(heads))
	fence.Add(1) // virtio_mb: the index store before the avail_event load
	ev := q.AvailEvent()
	if now-ev-1 < now-old {
		n.kick++
		n.m.Dev.Kick(i)
	}
}

// waitUsed waits (on MSI-X vector v) until queue i's used index reaches
// target, asking for an interrupt at the next used element each time.
func (n *benchNet) waitUsed(b *testing.B, i, v int, target uint16) {
	q := n.qs[i]
	for {
		u := q.UsedIdx()
		if u == target {
			return
		}
		q.SetUsedEvent(u)
		fence.Add(1)
		if q.UsedIdx() != u {
			continue
		}
		n.m.MSIX.Wait(b, v)
		n.wake++
	}
}

func (n *benchNet) report(b *testing.B, frames int, cpu time.Duration) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(frames), "ns/frame")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(frames), "cpu-ns/frame")
	b.ReportMetric(float64(n.kick)/float64(frames), "kicks/frame")
	b.ReportMetric(float64(n.wake)/float64(frames), "wakeups/frame")
	b.ReportMetric(0, "ns/op")
}

func udpFrame(payload int) []byte {
	f := make([]byte, 14+20+8+payload)
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 0x99}) // not the TAP's: the kernel drops it early
	copy(f[6:12], guestMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+payload))
	ip[8], ip[9] = 64, 17
	copy(ip[12:], guestIP.To4())
	copy(ip[16:], hostIP.To4())
	return f
}

// BenchmarkTX transmits 1514-byte frames (header and frame in separate
// descriptors, as Linux does) in batches of 64.
func BenchmarkTX(b *testing.B) {
	taptest.InNetns(b, func() {
		n := setupBench(b, "gbtx0", vnet.FMrgRxbuf|vnet.FCsum|vnet.FHostTSO4)
		frame := udpFrame(1472)
		heads := make([]uint16, benchBatch)
		used := n.qs[1].UsedIdx()
		for i := range heads {
			c, err := n.qs[1].Add(vt.Buffers{Out: [][]byte{make([]byte, vnet.HdrSize), frame}})
			if err != nil {
				b.Fatal(err)
			}
			heads[i] = c.Head
		}
		n.m.Dev.Kick(1)
		n.waitUsed(b, 1, 2, used+benchBatch)
		used += benchBatch
		n.kick, n.wake = 0, 0
		sent0 := n.d.Stats.TxFrames.Load()
		frames := 0
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuNow()
		for frames < b.N {
			n.publish(b, 1, heads)
			used += benchBatch
			n.waitUsed(b, 1, 2, used)
			frames += benchBatch
		}
		cpu = cpuNow() - cpu
		b.StopTimer()
		if got := n.d.Stats.TxFrames.Load() - sent0; got != uint64(frames) {
			b.Fatalf("%d frames sent of %d (%d dropped)", got, frames, n.d.Stats.TxDropped.Load())
		}
		n.report(b, frames, cpu)
	})
}

// BenchmarkRX receives 1514-byte UDP frames the host kernel sends to the
// guest, in bursts of 64, into mergeable receive buffers of 1536 bytes.
func BenchmarkRX(b *testing.B) {
	taptest.InNetns(b, func() {
		n := setupBench(b, "gbrx0", vnet.FMrgRxbuf)
		link, err := netlink.LinkByName("gbrx0")
		if err != nil {
			b.Fatal(err)
		}
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: guestIP, HardwareAddr: guestMAC}); err != nil {
			b.Fatal(err)
		}
		conn, err := stdnet.DialUDP("udp4", &stdnet.UDPAddr{IP: hostIP}, &stdnet.UDPAddr{IP: guestIP, Port: 9})
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		payload := make([]byte, 1472)
		const posted = 128
		heads := make([]uint16, 0, posted)
		for range posted {
			c, err := n.qs[0].Add(vt.Buffers{In: []uint32{1536}})
			if err != nil {
				b.Fatal(err)
			}
			heads = append(heads, c.Head)
		}
		n.m.Dev.Kick(0)
		q := n.qs[0]
		used := q.UsedIdx()
		recv0 := n.d.Stats.RxFrames.Load()
		frames := 0
		round := func() {
			for range benchBatch {
				if _, err := conn.Write(payload); err != nil {
					b.Fatal(err)
				}
			}
			used += benchBatch
			n.waitUsed(b, 0, 1, used)
			// Re-post the buffers just used.
			var ids [benchBatch]uint16
			for k := range benchBatch {
				slot := uint64(uint16(used-benchBatch+uint16(k)) % q.Size)
				id, _ := q.Mem.Uint32(q.Used + memory.GPA(4+8*slot))
				ids[k] = uint16(id)
			}
			n.publish(b, 0, ids[:])
			frames += benchBatch
		}
		round()
		n.kick, n.wake, frames = 0, 0, 0
		recv0 = n.d.Stats.RxFrames.Load()
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuNow()
		for frames < b.N {
			round()
		}
		cpu = cpuNow() - cpu
		b.StopTimer()
		if got := n.d.Stats.RxFrames.Load() - recv0; got != uint64(frames) {
			b.Fatalf("%d frames received of %d", got, frames)
		}
		n.report(b, frames, cpu)
	})
}
