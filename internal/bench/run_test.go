package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// runBench runs Command with args and returns the decoded JSON line and the
// text report.
func runBench(t *testing.T, args ...string) (*Result, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := Command(t.Context(), args, &stdout, &stderr)
	if stdout.Len() == 0 {
		return nil, stderr.String(), err
	}
	if n := strings.Count(stdout.String(), "\n"); n != 1 {
		t.Fatalf("stdout has %d lines, want 1 JSON line:\n%s", n, stdout.String())
	}
	var res Result
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", jerr, stdout.String())
	}
	return &res, stderr.String(), err
}

func TestFanoutRawStandIn(t *testing.T) {
	a, b := newStandIn(t, "a"), newStandIn(t, "b")
	_ = b
	res, report, err := runBench(t, "fanout", "-url", a.url(), "-subs", "20", "-publishers", "2",
		"-rate", "200", "-warmup", "200ms", "-duration", "1s", "-drain", "5s", "-pids", "1")
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	t.Log(report)
	_ = time.Second
	if res.Loss != 0 || res.Duplicates != 0 || res.Reordered != 0 {
		t.Errorf("loss %d dups %d reordered %d, want 0", res.Loss, res.Duplicates, res.Reordered)
	}
}
