package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	lines := `{"scenario":"fanout","mode":"raw","subscribers":1000,"connected":1000,"rate_target":300,"size":128,` +
		`"delivered_per_s":299500.4,"expected":10,"delivered":10,"latency_ms":{"count":10,"p50":1.5,"p99":12,"max":40},` +
		`"servers":[{"pid":1,"name":"relay","rss":94371840},{"pid":2,"name":"relay","rss":104857600},{"pid":3,"name":"redis-server","rss":10485760}],` +
		`"server_cpu_per_delivery_us":1.234,"generator":{"cores":0.5,"cpu_per_delivery_us":0.8}}
not json
{"scenario":"idle","mode":"raw","subscribers":10000,"connected":10000,"window_s":60,"server_rss_per_conn":12800,` +
		`"servers":[{"pid":1,"name":"relay","rss":1}],"closes":{"1013 slow consumer":2}}
`
	path := filepath.Join(t.TempDir(), "results.jsonl")
	if err := os.WriteFile(path, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if err := Command(t.Context(), []string{"table", path}, &out, &errOut); err != nil {
		t.Fatal(err, errOut.String())
	}
	got := out.String()
	for _, want := range []string{
		"| 1,000 subscribers × 300 msg/s, 128 B | raw | 299,500 | 0 (0.00 %) | 0 / 0 | 1.500ms / 12.0ms / 40.0ms |",
		"| 1.23 µs | 90–100 MiB per node; redis 10.0 MiB | 0.50 cores, 0.80 µs/delivery |",
		"| 10,000 idle subscribed connections, held 60 s; close 1013 slow consumer ×2 | raw |",
		"12.5 KiB per connection",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n"); n != 4 {
		t.Errorf("table has %d lines, want header, rule and 2 rows:\n%s", n, got)
	}
	if err := Command(t.Context(), []string{"table", filepath.Join(t.TempDir(), "missing")}, &out, &errOut); err == nil {
		t.Error("table of a missing file: nil error")
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.6: "1,234,568", -4200: "-4,200"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestProgressLine(t *testing.T) {
	r := &runner{cfg: &Config{}, clk: newClock()}
	r.conns.Store(7)
	r.fails.Store(1)
	var buf bytes.Buffer
	p := newProgress(&buf, r)
	stop := p.start("measure")
	stop()
	p.line()
	got := buf.String()
	for _, want := range []string{"measure", "conns 7 (failed 1)", "received 0 (0/s)"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
	if r.peakG.Load() == 0 {
		t.Error("progress did not sample goroutines")
	}
}
