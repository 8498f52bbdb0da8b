package testenv

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const redisHint = "redis-server not found on PATH: install it with `apt-get install redis-server` (make test does this when run as root)"

// Redis is a private redis-server on a loopback port, stopped at the end of
// the test. Stop and Start restart it on the same port, for fault tests.
type Redis struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	args []string // more arguments of redis-server

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRedis starts a redis-server for t, or fails t with an install hint.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(redisHint)
	}
	return startRedis(t, bin)
}

func startRedis(t testing.TB, bin string, args ...string) *Redis {
	t.Helper()
	r := &Redis{t: t, bin: bin, dir: t.TempDir(), args: args}
	var lastErr error
	for range 5 { // a free port may be taken before redis binds it
		r.port = FreePort(t)
		if lastErr = r.start(); lastErr == nil {
			t.Cleanup(r.Stop)
			return r
		}
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Port is the server's port.
func (r *Redis) Port() int { return r.port }

// URL is the server's redis:// URL.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Client returns a go-redis client of the server, closed at the end of the
// test.
func (r *Redis) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

// Start starts the server again after Stop, on the same port.
func (r *Redis) Start() {
	r.t.Helper()
	if err := r.start(); err != nil {
		r.t.Fatalf("restart redis-server: %v", err)
	}
}

func (r *Redis) start() error {
	args := append([]string{
		"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir,
		"--logfile", "", "--loglevel", "notice"}, r.args...)
	cmd := exec.Command(r.bin, args...)
	done, err := startUntil(cmd, "Ready to accept connections", "redis-server", "ready")
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
	return nil
}

// Stop kills the server and waits for it to exit; clients see their
// connections drop, as in a crash.
func (r *Redis) Stop() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// Pause stops the server with SIGSTOP: it keeps its connections and its
// listening socket (the kernel still completes new connections into its
// backlog) but answers nothing, as a server stalled in a long command, a
// swap storm or a frozen VM does, until Resume.
func (r *Redis) Pause() { r.signal(stopSignal) }

// Resume continues the server after Pause (SIGCONT): it then answers,
// in order, everything sent to it meanwhile.
func (r *Redis) Resume() { r.signal(contSignal) }

func (r *Redis) signal(sig os.Signal) {
	r.t.Helper()
	r.mu.Lock()
	cmd := r.cmd
	r.mu.Unlock()
	if cmd == nil {
		r.t.Fatalf("signal %v: redis-server is not running", sig)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("signal %v to redis-server: %v", sig, err)
	}
}

// NumSub returns how many subscribers Redis counts for each channel.
func (r *Redis) NumSub(t testing.TB, channels ...string) map[string]int64 {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	n, err := c.PubSubNumSub(context.Background(), channels...).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return n
}

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startUntil starts cmd, a redis-server, and waits up to 30 s until a line
// of its output holds marker (what names the process and the state in the
// error). It returns a channel closed once cmd has exited; the process
// runs on, its output drained, until it is killed.
func startUntil(cmd *exec.Cmd, marker, what, state string) (done chan struct{}, err error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	done = make(chan struct{})
	var log strings.Builder
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			if !signalled {
				log.WriteString(sc.Text() + "\n")
				if strings.Contains(sc.Text(), marker) {
					signalled = true
					close(ready)
				}
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
	}()
	select {
	case <-ready:
		return done, nil
	case <-done:
		return nil, fmt.Errorf("%s exited:\n%s", what, log.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		return nil, fmt.Errorf("%s not %s after 30s:\n%s", what, state, log.String())
	}
}
