package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is every figure of one run; it is printed as the final JSON line.
// Rates are per second, latencies in milliseconds, sizes in bytes, CPU in
// seconds. Fields that do not apply to the scenario are zero or absent.
type Result struct {
	Scenario    string   `json:"scenario"`
	Mode        string   `json:"mode"`
	URLs        []string `json:"urls"`
	RunID       string   `json:"run_id"`
	Subscribers int      `json:"subscribers"` // requested
	Connected   int64    `json:"connected"`   // subscribers established
	Channels    int      `json:"channels"`
	Publishers  int      `json:"publishers"`
	Streams     int      `json:"streams"`
	RateTarget  float64  `json:"rate_target"`
	Size        int      `json:"size"`
	WarmupS     float64  `json:"warmup_s"`
	WindowS     float64  `json:"window_s"` // measured length of the window or hold
	FileLimit   uint64   `json:"file_limit"`

	// Publishing (fanout, channels): messages with a send time inside the
	// window, deliveries expected and delivered for them.
	Published       int64            `json:"published"`
	PublishRate     float64          `json:"publish_rate"`
	Expected        int64            `json:"expected"`
	Delivered       int64            `json:"delivered"` // unique, sent in window
	Loss            int64            `json:"loss"`
	LossPct         float64          `json:"loss_pct"`
	Duplicates      int64            `json:"duplicates"`
	Reordered       int64            `json:"reordered"`
	Foreign         int64            `json:"foreign"` // messages that were not this run's payloads
	DeliveredPerSec float64          `json:"delivered_per_s"`
	PublisherSide   int64            `json:"publisher_side_deliveries"` // raw: others' messages on publishers' connections, in window
	Latency         *Latency         `json:"latency_ms,omitempty"`
	PublishAck      *Latency         `json:"publish_ack_ms,omitempty"`
	PublisherLagMax float64          `json:"publisher_lag_max_ms"` // furthest a publisher fell behind schedule (blocked writes)
	PublishErrors   map[string]int64 `json:"publish_errors,omitempty"`
	Nodes           map[string]int64 `json:"nodes,omitempty"` // subscribers per X-Relay-Node
	ConnectErrors   map[string]int64 `json:"connect_errors,omitempty"`
	Closes          map[string]int64 `json:"closes,omitempty"` // connections the server ended, by close code
	Connect         *ConnectStats    `json:"connect,omitempty"`
	Servers         []ServerStats    `json:"servers,omitempty"`
	ServerCPUPerDel float64          `json:"server_cpu_per_delivery_us,omitempty"`
	RSSPerConn      float64          `json:"server_rss_per_conn,omitempty"` // idle: growth over all PIDs per connection
	Generator       GeneratorStats   `json:"generator"`
	Machine         MachineStats     `json:"machine"`
	Warnings        []string         `json:"warnings,omitempty"`
	Aborted         string           `json:"aborted,omitempty"`
}

// Latency is a summary of an HDR histogram, in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

// ConnectStats are the handshakes of the run (every scenario).
type ConnectStats struct {
	Attempted int64    `json:"attempted"`
	Succeeded int64    `json:"succeeded"`
	Failed    int64    `json:"failed"`
	PerSec    float64  `json:"per_s,omitempty"` // connect scenario: successful handshakes per second
	Latency   *Latency `json:"latency_ms,omitempty"`
}

// ServerStats is one server process over the window (or the hold).
type ServerStats struct {
	PID        int     `json:"pid"`
	Name       string  `json:"name"`
	CPUSeconds float64 `json:"cpu_s"`
	Cores      float64 `json:"cores"`
	RSSBefore  int64   `json:"rss_before"`
	RSS        int64   `json:"rss"`
	HWM        int64   `json:"rss_peak"`
	Error      string  `json:"error,omitempty"`
}

// GeneratorStats is the generator's own cost over the window, to show
// whether it was the bottleneck.
type GeneratorStats struct {
	CPUSeconds     float64 `json:"cpu_s"`
	Cores          float64 `json:"cores"`
	CPUPerDelivery float64 `json:"cpu_per_delivery_us,omitempty"`
	RSS            int64   `json:"rss"`
	RSSPerConn     float64 `json:"rss_per_conn,omitempty"`
	Goroutines     int     `json:"goroutines"`
}

// MachineStats is the whole machine's CPU over the window: what other
// processes used is load that the figures above did not account for.
type MachineStats struct {
	CPUs        int     `json:"cpus"`
	BusyCores   float64 `json:"busy_cores"`   // all processes
	OthersCores float64 `json:"others_cores"` // neither the -pids nor the generator: other processes, interrupts
}

func newResult(cfg *Config, runID string) *Result {
	res := &Result{
		Scenario:    cfg.Scenario,
		Mode:        cfg.Mode,
		RunID:       runID,
		Subscribers: cfg.Subscribers,
		Channels:    cfg.Channels,
		Publishers:  cfg.Publishers,
		RateTarget:  cfg.Rate,
		Size:        cfg.Size,
		WarmupS:     cfg.Warmup.Seconds(),
	}
	if cfg.Scenario == Fanout || cfg.Scenario == Channels {
		res.Streams = max(cfg.Publishers, cfg.Channels)
	} else {
		res.RateTarget, res.Size, res.WarmupS = 0, 0, 0
	}
	for _, u := range cfg.URLs {
		res.URLs = append(res.URLs, u.Redacted())
	}
	return res
}

func summarize(h *hdrhistogram.Histogram) *Latency {
	if h.TotalCount() == 0 {
		return nil
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return &Latency{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
		Mean:  h.Mean() / 1000,
	}
}

// servers fills the per-process figures between two samples.
func (res *Result) servers(before, after snapshot) (cpu float64) {
	hz := float64(userHZ())
	secs := time.Duration(after.at - before.at).Seconds()
	res.Servers = nil
	for i := range after.procs {
		b, a := before.procs[i], after.procs[i]
		s := ServerStats{PID: a.PID, Name: a.Name, RSSBefore: b.RSS, RSS: a.RSS, HWM: a.HWM}
		if err := after.procErr[i]; err != nil {
			s.Error = err.Error()
		} else if err := before.procErr[i]; err != nil {
			s.Error = err.Error()
		} else {
			s.CPUSeconds = float64(a.CPUTicks-b.CPUTicks) / hz
			if secs > 0 {
				s.Cores = s.CPUSeconds / secs
			}
			cpu += s.CPUSeconds
		}
		res.Servers = append(res.Servers, s)
	}
	g := &res.Generator
	g.CPUSeconds = after.self - before.self
	if secs > 0 {
		g.Cores = g.CPUSeconds / secs
	}
	m := &res.Machine
	m.CPUs = runtime.NumCPU()
	if secs > 0 && after.total > before.total {
		// Ticks of all CPUs over the window; busy share times the CPUs.
		share := float64(after.busy-before.busy) / float64(after.total-before.total)
		m.BusyCores = share * float64(m.CPUs)
		m.OthersCores = max(0, m.BusyCores-g.Cores-cpu/secs)
		if m.OthersCores >= 0.25 {
			res.Warnings = append(res.Warnings, fmt.Sprintf(
				"%.2f cores went to other processes (or interrupts) during the window: the machine was not quiet", m.OthersCores))
		}
	}
	return cpu
}

// setWindow fills the figures of a publishing run's window.
func (res *Result) setWindow(r *runner, before, after snapshot) {
	secs := time.Duration(after.at - before.at).Seconds()
	res.WindowS = secs
	deliveries := after.received - before.received
	side := after.side - before.side
	res.PublisherSide = side
	if secs > 0 {
		res.DeliveredPerSec = float64(deliveries) / secs
	}
	cpu := res.servers(before, after)
	res.Generator.RSS = selfRSS()
	if all := deliveries + side; all > 0 {
		if len(res.Servers) > 0 {
			res.ServerCPUPerDel = cpu / float64(all) * 1e6
		}
		res.Generator.CPUPerDelivery = res.Generator.CPUSeconds / float64(all) * 1e6
	}
}

// setIdle fills the figures of an idle run's hold.
func (res *Result) setIdle(r *runner, before, after snapshot, holdStart int64) {
	res.servers(before, after)
	res.WindowS = time.Duration(after.at - holdStart).Seconds()
	n := r.conns.Load()
	if n == 0 {
		return
	}
	var growth int64
	for i := range res.Servers {
		s := &res.Servers[i]
		if s.Error == "" {
			growth += s.RSS - s.RSSBefore
		}
	}
	if len(res.Servers) > 0 {
		res.RSSPerConn = float64(growth) / float64(n)
	}
	res.Generator.RSS = selfRSS() // while the connections are held
	res.Generator.RSSPerConn = float64(res.Generator.RSS) / float64(n)
}

// setConnect fills the figures of a connection storm.
func (res *Result) setConnect(r *runner, before, after snapshot) {
	secs := time.Duration(after.at - before.at).Seconds()
	res.WindowS = secs
	res.servers(before, after)
	res.Connect = &ConnectStats{}
	if secs > 0 {
		res.Connect.PerSec = float64(r.conns.Load()) / secs
	}
}

// collect fills what every scenario reports, after all connections closed.
func (r *runner) collect(res *Result) {
	res.Connected = int64(len(r.subs))
	if res.Connect == nil {
		res.Connect = &ConnectStats{}
	}
	res.Connect.Succeeded = r.conns.Load()
	res.Connect.Failed = r.fails.Load()
	res.Connect.Attempted = res.Connect.Succeeded + res.Connect.Failed
	res.Connect.Latency = summarize(r.conLat.merged())
	_, res.Delivered, res.Duplicates, res.Reordered, res.Foreign = r.counters()
	if res.Expected > 0 {
		res.Loss = max(0, res.Expected-res.Delivered)
		res.LossPct = 100 * float64(res.Loss) / float64(res.Expected)
	}
	if res.WindowS > 0 && res.Published > 0 {
		res.PublishRate = float64(res.Published) / res.WindowS
	}
	res.Latency = summarize(r.lat.merged())
	res.PublishAck = summarize(r.ackLat.merged())
	for _, p := range r.pubs {
		res.PublisherLagMax = max(res.PublisherLagMax, float64(p.lagMax.Load())/1e6)
	}
	res.PublishErrors = nonEmpty(r.pubErrors.snapshot())
	res.Nodes = nonEmpty(r.nodes.snapshot())
	res.ConnectErrors = nonEmpty(r.dialErrors.snapshot())
	res.Closes = nonEmpty(r.closes.snapshot())
	if res.Generator.RSS == 0 {
		res.Generator.RSS = selfRSS()
	}
	res.Generator.Goroutines = int(max(r.peakG.Load(), int64(runtime.NumGoroutine())))
}

func nonEmpty(m map[string]int64) map[string]int64 {
	if len(m) == 0 {
		return nil
	}
	return m
}

// selfRSS returns the generator's own resident set in bytes, or 0.
func selfRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	rss, _, _ := parseStatus(b)
	return rss
}

// WriteJSON writes res as one JSON line.
func (res *Result) WriteJSON(w io.Writer) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteText writes the human report.
func (res *Result) WriteText(w io.Writer) {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("relay bench %s, %s mode, %s\n", res.Scenario, res.Mode, strings.Join(res.URLs, " "))
	c := res.Connect
	p("connections: %d of %d subscribers", res.Connected, res.Subscribers)
	if c != nil {
		p("; handshakes %d ok, %d failed", c.Succeeded, c.Failed)
	}
	p("\n")
	if len(res.Nodes) > 0 {
		p("  per node:")
		for _, k := range sortedKeys(res.Nodes) {
			p(" %s %d", k, res.Nodes[k])
		}
		p("\n")
	}
	if c != nil && c.Latency != nil {
		p("  handshake: %s\n", c.Latency)
	}
	if c != nil && c.PerSec > 0 {
		p("  connects/s: %.0f over %.1f s\n", c.PerSec, res.WindowS)
	}
	for _, k := range sortedKeys(res.ConnectErrors) {
		p("  connect error: %s ×%d\n", k, res.ConnectErrors[k])
	}
	switch res.Scenario {
	case Fanout, Channels:
		p("load: %d channel(s), %d publisher(s), %d stream(s), %.0f msg/s target, %d B, %.1f s window after %.1f s warm-up\n",
			res.Channels, res.Publishers, res.Streams, res.RateTarget, res.Size, res.WindowS, res.WarmupS)
		p("published: %d (%.1f msg/s); publishers at most %s behind schedule\n", res.Published, res.PublishRate, fmtMS(res.PublisherLagMax))
		p("delivered: %d of %d expected; lost or later than the drain %d (%.3f %%), duplicates %d, out of order %d",
			res.Delivered, res.Expected, res.Loss, res.LossPct, res.Duplicates, res.Reordered)
		if res.Foreign > 0 {
			p(", foreign %d", res.Foreign)
		}
		p("\n")
		p("throughput: %.0f deliveries/s received in the window", res.DeliveredPerSec)
		if res.PublisherSide > 0 && res.WindowS > 0 {
			p(" (+%.0f/s to publishers' raw connections)", float64(res.PublisherSide)/res.WindowS)
		}
		p("\n")
		if res.Latency != nil {
			p("latency end to end: %s\n", res.Latency)
		}
		if res.PublishAck != nil {
			p("publish ack: %s\n", res.PublishAck)
		}
		for _, k := range sortedKeys(res.PublishErrors) {
			p("  publish error: %s ×%d\n", k, res.PublishErrors[k])
		}
	case Idle:
		p("held %d connections for %.1f s after connecting\n", res.Connected, res.WindowS)
	}
	for _, k := range sortedKeys(res.Closes) {
		p("closed by server or network: %s ×%d\n", k, res.Closes[k])
	}
	for _, s := range res.Servers {
		if s.Error != "" {
			p("server pid %d: %s\n", s.PID, s.Error)
			continue
		}
		p("server pid %d (%s): cpu %.2f s (%.2f cores), rss %s (before %s, peak %s)",
			s.PID, s.Name, s.CPUSeconds, s.Cores, mib(s.RSS), mib(s.RSSBefore), mib(s.HWM))
		p("\n")
	}
	if res.ServerCPUPerDel > 0 {
		p("server cpu per delivery: %.2f µs\n", res.ServerCPUPerDel)
	}
	if res.RSSPerConn != 0 {
		p("server rss per connection: %.1f KiB (growth of all PIDs from before connecting to the end of the hold, / %d connections)\n",
			res.RSSPerConn/1024, res.Connected)
	}
	g := res.Generator
	p("generator: cpu %.2f s (%.2f cores)", g.CPUSeconds, g.Cores)
	if g.CPUPerDelivery > 0 {
		p(", %.2f µs per delivery", g.CPUPerDelivery)
	}
	p(", rss %s, peak goroutines %d\n", mib(g.RSS), g.Goroutines)
	if m := res.Machine; m.CPUs > 0 && m.BusyCores > 0 {
		p("machine: %.2f of %d cores busy; %.2f not in the -pids or the generator (other processes, interrupts)\n",
			m.BusyCores, m.CPUs, m.OthersCores)
	}
	for _, s := range res.Warnings {
		p("warning: %s\n", s)
	}
	if res.Aborted != "" {
		p("ABORTED: %s\n", res.Aborted)
	}
	io.WriteString(w, b.String())
}

func (l *Latency) String() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (n=%d)",
		fmtMS(l.P50), fmtMS(l.P90), fmtMS(l.P99), fmtMS(l.P999), fmtMS(l.Max), l.Count)
}

func fmtMS(ms float64) string {
	switch {
	case ms >= 1000:
		return fmt.Sprintf("%.2fs", ms/1000)
	case ms >= 10:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.3fms", ms)
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// progress prints one line a second while a run goes on.
type progress struct {
	w     io.Writer
	r     *runner
	phase atomic.Pointer[string]
	last  struct {
		at, recv, side int64
	}
}

func newProgress(w io.Writer, r *runner) *progress {
	return &progress{w: w, r: r}
}

func (p *progress) setPhase(s string) { p.phase.Store(&s) }

// start begins printing (if there is a writer) and returns the function
// that stops it and waits.
func (p *progress) start(phase string) (stop func()) {
	p.setPhase(phase)
	p.last.at = p.r.clk.now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.line()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func (p *progress) line() {
	if g := int64(runtime.NumGoroutine()); g > p.r.peakG.Load() {
		p.r.peakG.Store(g)
	}
	if p.w == nil {
		return
	}
	r := p.r
	now := r.clk.now()
	recv, _, _, _, _ := r.counters()
	var sent int64
	r.mu.Lock()
	pubs := r.pubs
	r.mu.Unlock()
	for _, pb := range pubs {
		for _, s := range pb.streams {
			sent += s.sent.Load()
		}
	}
	secs := time.Duration(now - p.last.at).Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(recv-p.last.recv) / secs
	}
	p.last.at, p.last.recv = now, recv
	fmt.Fprintf(p.w, "[%6.1fs] %-8s conns %d (failed %d)  sent %d  received %d (%.0f/s)  closes %d\n",
		time.Duration(now).Seconds(), *p.phase.Load(), r.conns.Load(), r.fails.Load(), sent, recv, rate, r.closes.total())
}
