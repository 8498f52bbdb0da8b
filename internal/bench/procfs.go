package bench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcSample is what the generator reads of one process from /proc.
type ProcSample struct {
	PID      int
	Name     string // comm
	CPUTicks uint64 // utime + stime, in clock ticks
	RSS      int64  // resident set, bytes (VmRSS)
	HWM      int64  // peak resident set, bytes (VmHWM)
}

// readProc reads /proc/PID/stat and /proc/PID/status under root (normally
// "/proc").
func readProc(root string, pid int) (ProcSample, error) {
	s := ProcSample{PID: pid}
	stat, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", root, pid))
	if err != nil {
		return s, err
	}
	s.Name, s.CPUTicks, err = parseStat(stat)
	if err != nil {
		return s, fmt.Errorf("pid %d: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("%s/%d/status", root, pid))
	if err != nil {
		return s, err
	}
	s.RSS, s.HWM, err = parseStatus(status)
	if err != nil {
		return s, fmt.Errorf("pid %d: %w", pid, err)
	}
	return s, nil
}

// parseStat returns comm and utime+stime of a /proc/PID/stat line. comm may
// contain spaces and parentheses, so fields are counted after the last ')'.
func parseStat(b []byte) (string, uint64, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return "", 0, errors.New("stat: no comm")
	}
	name := string(b[open+1 : closing])
	fields := strings.Fields(string(b[closing+1:]))
	// fields[0] is field 3 (state); utime is field 14, stime field 15.
	if len(fields) < 13 {
		return "", 0, errors.New("stat: too few fields")
	}
	ut, err1 := strconv.ParseUint(fields[11], 10, 64)
	st, err2 := strconv.ParseUint(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return "", 0, fmt.Errorf("stat: %w", err)
	}
	return name, ut + st, nil
}

// parseStatus returns VmRSS and VmHWM of /proc/PID/status, in bytes.
func parseStatus(b []byte) (rss, hwm int64, err error) {
	found := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("status: bad %s line %q", key, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("status: %s: %w", key, err)
		}
		if key == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
		found++
	}
	if found < 2 {
		return 0, 0, errors.New("status: no VmRSS/VmHWM (kernel thread or zombie?)")
	}
	return rss, hwm, nil
}

// clockTicks returns the kernel's USER_HZ from the auxiliary vector
// (AT_CLKTCK), the unit of utime and stime, or 100 when it cannot be read.
func clockTicks(auxv []byte) uint64 {
	const atClkTck = 17
	for len(auxv) >= 16 {
		k := binary.NativeEndian.Uint64(auxv)
		v := binary.NativeEndian.Uint64(auxv[8:])
		if k == atClkTck && v > 0 {
			return v
		}
		if k == 0 {
			break
		}
		auxv = auxv[16:]
	}
	return 100
}

// userHZ is the USER_HZ of this machine.
func userHZ() uint64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100
	}
	return clockTicks(b)
}

// parsePIDs parses a comma-separated PID list.
func parsePIDs(s string) ([]int, error) {
	var pids []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("bad pid %q", f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// parseCPUBusy returns the busy and total clock ticks of all CPUs from the
// first line of /proc/stat ("cpu  user nice system idle iowait irq softirq
// steal guest guest_nice"). Busy excludes idle and iowait; guest time is
// already inside user and nice.
func parseCPUBusy(stat []byte) (busy, total uint64, err error) {
	line, _, _ := strings.Cut(string(stat), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, errors.New("/proc/stat: no cpu line")
	}
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

// machineCPU reads the busy and total ticks of the machine, or zeros.
func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	busy, total, _ = parseCPUBusy(b)
	return busy, total
}
