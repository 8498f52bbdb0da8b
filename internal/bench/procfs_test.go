package bench

import (
	"encoding/binary"
	"os"
	"testing"
)

func TestReadProcFixture(t *testing.T) {
	got, err := readProc("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	want := ProcSample{PID: 4242, Name: "relay (node) 1", CPUTicks: 1234 + 567, RSS: 90160 << 10, HWM: 98304 << 10}
	if got != want {
		t.Errorf("readProc = %+v, want %+v", got, want)
	}
}

func TestReadProcSelf(t *testing.T) {
	got, err := readProc("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if got.RSS <= 0 || got.HWM < got.RSS || got.Name == "" {
		t.Errorf("readProc(self) = %+v: want a name and 0 < RSS <= HWM", got)
	}
	// CPU ticks never go backwards.
	again, err := readProc("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if again.CPUTicks < got.CPUTicks {
		t.Errorf("CPU ticks went from %d to %d", got.CPUTicks, again.CPUTicks)
	}
}

func TestReadProcMissing(t *testing.T) {
	if _, err := readProc("testdata/proc", 1); err == nil {
		t.Error("readProc of a missing pid: nil error")
	}
}

func TestParseStatBad(t *testing.T) {
	for _, in := range []string{"", "12 (x", "12 (x) S 1 2 3", "12 (x) S 1 2 3 4 5 6 7 8 9 10 u s 1 1"} {
		if _, _, err := parseStat([]byte(in)); err == nil {
			t.Errorf("parseStat(%q): nil error", in)
		}
	}
}

func TestParseStatusBad(t *testing.T) {
	for _, in := range []string{"", "Name:\tkthreadd\n", "VmRSS:\t12 MB\nVmHWM:\t13 kB\n", "VmRSS:\tx kB\nVmHWM:\t1 kB\n"} {
		if _, _, err := parseStatus([]byte(in)); err == nil {
			t.Errorf("parseStatus(%q): nil error", in)
		}
	}
}

func TestClockTicks(t *testing.T) {
	aux := func(pairs ...uint64) []byte {
		b := make([]byte, 8*len(pairs))
		for i, v := range pairs {
			binary.NativeEndian.PutUint64(b[8*i:], v)
		}
		return b
	}
	tests := []struct {
		in   []byte
		want uint64
	}{
		{aux(6, 4096, 17, 250, 0, 0), 250},
		{aux(6, 4096, 0, 0, 17, 250), 100}, // after AT_NULL: ignored
		{nil, 100},
		{aux(17, 0), 100},
	}
	for _, tt := range tests {
		if got := clockTicks(tt.in); got != tt.want {
			t.Errorf("clockTicks(%v) = %d, want %d", tt.in, got, tt.want)
		}
	}
	if hz := userHZ(); hz == 0 {
		t.Error("userHZ() = 0")
	}
}

func TestParsePIDs(t *testing.T) {
	got, err := parsePIDs(" 12, 34,,56 ")
	if err != nil || len(got) != 3 || got[0] != 12 || got[2] != 56 {
		t.Errorf("parsePIDs = %v, %v", got, err)
	}
	for _, in := range []string{"x", "-1", "0", "1,2;3"} {
		if _, err := parsePIDs(in); err == nil {
			t.Errorf("parsePIDs(%q): nil error", in)
		}
	}
}

func TestParseCPUBusy(t *testing.T) {
	busy, total, err := parseCPUBusy([]byte("cpu  100 5 50 1000 20 1 2 3 7 0\ncpu0 1 2 3 4\n"))
	if err != nil || busy != 100+5+50+1+2+3 || total != 100+5+50+1000+20+1+2+3 {
		t.Errorf("parseCPUBusy = %d, %d, %v; want 161, 1181", busy, total, err)
	}
	for _, in := range []string{"", "cpu0 1 2 3 4 5 6 7", "cpu 1 2 x 4 5 6 7"} {
		if _, _, err := parseCPUBusy([]byte(in)); err == nil {
			t.Errorf("parseCPUBusy(%q): nil error", in)
		}
	}
	if b, tot := machineCPU(); tot == 0 || b > tot {
		t.Errorf("machineCPU() = %d, %d", b, tot)
	}
}
