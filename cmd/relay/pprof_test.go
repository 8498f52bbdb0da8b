package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
)

// TestPprofStops: the profile server serves, and stop ends it while a 30 s
// CPU profile is under way, waiting for its goroutines (goleak checks that
// none is left at the package's end).
func TestPprofStops(t *testing.T) {
	var logs strings.Builder
	stop, err := servePprof("127.0.0.1:0", slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	var line struct{ Pprof string }
	if err := json.Unmarshal([]byte(logs.String()), &line); err != nil || line.Pprof == "" {
		t.Fatalf("servePprof logged %q (%v), want its address", logs.String(), err)
	}
	base := strings.TrimSuffix(line.Pprof, "/debug/pprof/")

	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Get(base + "/debug/pprof/symbol")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /debug/pprof/symbol: %s", resp.Status)
	}

	profile := make(chan error, 1)
	go func() {
		resp, err := client.Get(base + "/debug/pprof/profile?seconds=30")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		profile <- err
	}()
	// No event says the handler is profiling: its goroutine's stack does.
	testenv.WaitFor(t, 10*time.Second, "the CPU profile to start", func() bool {
		var stacks strings.Builder
		pprof.Lookup("goroutine").WriteTo(&stacks, 1)
		return strings.Contains(stacks.String(), "net/http/pprof.Profile")
	})
	stop()
	stopped = true
	<-profile // the profile ended with the server, whether cut or empty
	client.CloseIdleConnections()
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Errorf("CPU profile still running after stop: %v", err)
	} else {
		pprof.StopCPUProfile()
	}
}
