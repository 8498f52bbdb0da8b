package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// Table reads result JSON lines (as `relay bench` prints them) from the
// files named in args, or standard input for none or "-", and writes them
// as one markdown table to w. Lines that are not results are skipped.
func Table(args []string, w io.Writer) error {
	if len(args) == 0 {
		args = []string{"-"}
	}
	var rows []*Result
	for _, name := range args {
		var r io.Reader = os.Stdin
		if name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var res Result
			if json.Unmarshal(sc.Bytes(), &res) == nil && res.Scenario != "" {
				rows = append(rows, &res)
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	writeTable(w, rows)
	return nil
}

func writeTable(w io.Writer, rows []*Result) {
	fmt.Fprintln(w, "| load | mode | delivered/s | loss | dup / reordered | latency p50 / p99 / max | publish ack p99 | server CPU per delivery | memory | generator (and other load) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		cells := []string{loadLabel(r), r.Mode, "", "", "", "", "", "", memoryLabel(r), generatorLabel(r)}
		if r.Scenario == Fanout || r.Scenario == Channels {
			cells[2] = thousands(r.DeliveredPerSec)
			cells[3] = fmt.Sprintf("%s (%.2f %%)", thousands(float64(r.Loss)), r.LossPct)
			cells[4] = thousands(float64(r.Duplicates)) + " / " + thousands(float64(r.Reordered))
			if l := r.Latency; l != nil {
				cells[5] = fmtMS(l.P50) + " / " + fmtMS(l.P99) + " / " + fmtMS(l.Max)
			}
			if a := r.PublishAck; a != nil {
				cells[6] = fmtMS(a.P99)
			}
			if r.ServerCPUPerDel > 0 {
				cells[7] = fmt.Sprintf("%.2f µs", r.ServerCPUPerDel)
			}
		}
		if r.Aborted != "" {
			cells[0] += " (aborted: " + r.Aborted + ")"
		}
		if n := len(r.Closes) + len(r.ConnectErrors); n > 0 {
			var parts []string
			for _, k := range sortedKeys(r.ConnectErrors) {
				parts = append(parts, fmt.Sprintf("%s ×%d", k, r.ConnectErrors[k]))
			}
			for _, k := range sortedKeys(r.Closes) {
				parts = append(parts, fmt.Sprintf("close %s ×%d", k, r.Closes[k]))
			}
			cells[0] += "; " + strings.Join(parts, ", ")
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}

func loadLabel(r *Result) string {
	switch r.Scenario {
	case Fanout:
		return fmt.Sprintf("%s subscribers × %s msg/s, %d B", thousands(float64(r.Connected)), thousands(r.RateTarget), r.Size)
	case Channels:
		return fmt.Sprintf("%s channels, %s subscribers, %s msg/s, %d B", thousands(float64(r.Channels)),
			thousands(float64(r.Connected)), thousands(r.RateTarget), r.Size)
	case Idle:
		return fmt.Sprintf("%s idle subscribed connections, held %.0f s", thousands(float64(r.Connected)), r.WindowS)
	case Connect:
		s := fmt.Sprintf("connect storm: %s of %s connections", thousands(float64(r.Connected)), thousands(float64(r.Subscribers)))
		if r.Connect != nil {
			s += fmt.Sprintf(", %s/s", thousands(r.Connect.PerSec))
		}
		return s
	}
	return r.Scenario
}

// memoryLabel gives the nodes' RSS (min–max over the non-Redis PIDs) and,
// for idle, the RSS growth per connection.
func memoryLabel(r *Result) string {
	var lo, hi int64 = -1, 0
	var redis []string
	for _, s := range r.Servers {
		if s.Error != "" {
			continue
		}
		if strings.Contains(s.Name, "redis") {
			redis = append(redis, mib(s.RSS))
			continue
		}
		if lo < 0 || s.RSS < lo {
			lo = s.RSS
		}
		hi = max(hi, s.RSS)
	}
	var parts []string
	if r.Scenario == Idle && r.RSSPerConn != 0 {
		parts = append(parts, fmt.Sprintf("%.1f KiB per connection", r.RSSPerConn/1024))
	}
	if lo >= 0 {
		l, h := fmt.Sprintf("%.0f", float64(lo)/(1<<20)), fmt.Sprintf("%.0f", float64(hi)/(1<<20))
		if l == h {
			parts = append(parts, l+" MiB per node")
		} else {
			parts = append(parts, l+"–"+h+" MiB per node")
		}
	}
	if len(redis) > 0 {
		parts = append(parts, "redis "+strings.Join(redis, ", "))
	}
	return strings.Join(parts, "; ")
}

func generatorLabel(r *Result) string {
	g := r.Generator
	s := fmt.Sprintf("%.2f cores, %s", g.Cores, mib(g.RSS))
	if g.CPUPerDelivery > 0 {
		s = fmt.Sprintf("%.2f cores, %.2f µs/delivery", g.Cores, g.CPUPerDelivery)
	}
	if o := r.Machine.OthersCores; o >= 0.05 {
		s += fmt.Sprintf("; other processes %.2f cores", o)
	}
	return s
}

// thousands formats v rounded, with comma separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
