//go:build compose

package deploytest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// appImage is the tag of the node image `docker-compose up --build`
// builds (RELAY_IMAGE, so that a user's relay:local stays as it is);
// appBuildImage tags the Dockerfile's build stage of that build, so that
// `docker image prune` keeps it and the next run reuses its layers (the
// module download, and all of it when the code has not changed).
const (
	appImage      = "relay-e2e:test"
	appBuildImage = "relay-e2e:build"
)

// TestComposeE2E runs the README's command, `docker-compose up --build`
// in the repository's root, on the real Dockerfile and docker-compose.yml,
// with stand-ins of the upstream images tagged under the names the files
// use; only the published ports, the node image's tag and the compose
// project's name come from the environment and -p. Then it checks what a
// user checks (three nodes and the load balancer healthy, a broadcast
// across nodes through the load balancer), brings up the monitoring
// profile's Prometheus and asks it whether it scrapes every node, and
// stops and starts nodes and Redis while clients exchange messages.
//
// Run it with: go test -tags compose -run TestComposeE2E -v ./...
func TestComposeE2E(t *testing.T) {
	requireDocker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	start := time.Now()

	// docker-compose 1.29's own parser is stricter than the Compose
	// Specification in places (TestComposeFile runs compose-go's).
	for _, args := range [][]string{{"config", "-q"}, {"--profile", "monitoring", "config", "-q"}} {
		if _, err := (command{dir: repoRoot(t)}).run(ctx, "docker-compose", args...); err != nil {
			t.Fatalf("docker-compose 1.29 rejects docker-compose.yml: %v", err)
		}
	}

	sweepStale(t, ctx)
	s := buildStandins(t, ctx)
	tagUpstream(t, ctx, upstreamImages(t, s))

	stack := up(t, ctx)
	t.Logf("stack healthy %v after the start of the test", time.Since(start).Round(100*time.Millisecond))
	checkAppImage(t, ctx)

	// Health through the load balancer; what is for operators only is
	// not served there.
	if code, body := stack.get(t, ctx, "/healthz"); code != http.StatusOK {
		t.Fatalf("GET /healthz through the load balancer = %d %s, want 200", code, body)
	}
	for _, path := range []string{"/metrics", "/readyz/details"} {
		if code, body := stack.get(t, ctx, path); code != http.StatusNotFound {
			t.Errorf("GET %s through the load balancer = %d %.200s, want 404", path, code, body)
		}
	}
	stack.awaitReady(t, ctx, http.StatusOK, 3)

	channel := "e2e-" + randHex(4)
	var pool clients
	t.Cleanup(pool.closeAll)

	// Clients placed by the load balancer span the nodes.
	phase(t, "place clients on every node", func() {
		for i := 0; i < 30 && len(pool.nodes()) < len(relayServices); i++ {
			pool.add(stack.dial(t, ctx, channel))
		}
		if nodes := pool.nodes(); len(nodes) < 2 || !slices.Contains(nodes, "relay-2") {
			t.Fatalf("30 clients through the load balancer landed on %v: want at least two nodes, relay-2 among them", nodes)
		}
		t.Logf("clients per node: %v", pool.perNode())
		pool.exchange(t, "all nodes")
	})

	// Counted traffic through every phase that follows: every
	// acknowledged message delivered, recovered or announced.
	finishCount := countedTraffic(t, ctx, stack, "count-"+randHex(4), 6, 3)

	// The monitoring profile: Prometheus scrapes every node. Grafana is
	// not started (no stand-in: Debian does not package it);
	// TestComposeMonitoring checks its half of the files.
	phase(t, "monitoring profile: prometheus", func() {
		if err := stack.compose(ctx, "--profile", "monitoring", "up", "-d", "prometheus"); err != nil {
			t.Fatal(err)
		}
		stack.awaitScraped(t, ctx)
	})

	// Stop one node: its clients are closed with 1012 or 1001 (or the
	// connection drops), reconnect through the load balancer to the
	// living nodes, and traffic resumes.
	phase(t, "stop relay-2", func() {
		victims := pool.on("relay-2")
		stopped := make(chan error, 1)
		// No -t: the compose file's stop_grace_period is under test too.
		go func() { stopped <- stack.compose(ctx, "stop", "relay-2") }()
		for _, c := range victims {
			select {
			case <-c.done:
				status := websocket.CloseStatus(c.err)
				switch status {
				case websocket.StatusServiceRestart, websocket.StatusGoingAway, -1:
					t.Logf("client on relay-2 closed: status %d (%v)", status, c.err)
				default:
					t.Errorf("client on relay-2 closed with %d (%v), want 1012, 1001 or a dropped connection", status, c.err)
				}
			case <-time.After(45 * time.Second):
				t.Fatalf("client on relay-2 still open 45 s after docker-compose stop")
			}
			pool.remove(c)
		}
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
		for range victims {
			c := stack.dial(t, ctx, channel)
			if c.node == "relay-2" {
				t.Fatalf("a new connection landed on the stopped relay-2")
			}
			pool.add(c)
		}
		t.Logf("clients per node: %v", pool.perNode())
		pool.exchange(t, "relay-1 and relay-3")
	})

	// Start it again: it rejoins, a new connection lands on it and
	// exchanges messages with the others.
	phase(t, "start relay-2", func() {
		if err := stack.compose(ctx, "start", "relay-2"); err != nil {
			t.Fatal(err)
		}
		stack.awaitHealthy(t, ctx, "relay-2")
		// nginx skips a node for fail_timeout after its last failure: poll
		// (no event tells when nginx tries it again).
		deadline := time.Now().Add(30 * time.Second)
		for !slices.Contains(pool.nodes(), "relay-2") {
			if time.Now().After(deadline) {
				t.Fatalf("no new connection landed on relay-2 within 30 s of it being healthy (per node: %v)", pool.perNode())
			}
			c := stack.dial(t, ctx, channel)
			pool.add(c)
			if c.node != "relay-2" {
				pollPause(ctx, 250*time.Millisecond)
			}
		}
		t.Logf("clients per node: %v", pool.perNode())
		pool.exchange(t, "all nodes after relay-2 rejoined")
	})

	// Stop Redis: the nodes report not-ready; start it: they are ready
	// again and delivery resumes.
	phase(t, "stop and start redis", func() {
		if out, err := stack.composeOut(ctx, "exec", "-T", "redis", "redis-cli", "config", "get", "appendonly"); err != nil ||
			!strings.Contains(out, "yes") {
			t.Errorf("redis appendonly = %q, %v; want yes", out, err)
		}
		if err := stack.compose(ctx, "stop", "redis"); err != nil {
			t.Fatal(err)
		}
		// Three in a row: the load balancer spreads them over the nodes.
		stack.awaitReady(t, ctx, http.StatusServiceUnavailable, 3)
		// The public answer names the component, not Redis's address.
		if code, body := stack.get(t, ctx, "/readyz"); code != http.StatusServiceUnavailable ||
			!strings.Contains(body, `"failing":["broker"]`) || strings.Contains(body, "reasons") || strings.Contains(body, "6379") {
			t.Errorf("GET /readyz with Redis stopped = %d %s, want 503 failing [broker] and no details", code, body)
		}
		if err := stack.compose(ctx, "start", "redis"); err != nil {
			t.Fatal(err)
		}
		stack.awaitHealthy(t, ctx, "redis")
		stack.awaitReady(t, ctx, http.StatusOK, 6)
		// Clients a node closed while Redis was away reconnect.
		for _, c := range pool.all() {
			select {
			case <-c.done:
				t.Logf("client on %s closed during the Redis outage: status %d (%v); reconnecting", c.node, websocket.CloseStatus(c.err), c.err)
				pool.remove(c)
				pool.add(stack.dial(t, ctx, channel))
			default:
			}
		}
		if len(pool.nodes()) < 2 {
			t.Fatalf("clients on %v only", pool.nodes())
		}
		t.Logf("clients per node: %v", pool.perNode())
		pool.exchange(t, "all nodes after Redis came back")
	})

	phase(t, "count the traffic of the node and Redis restarts", func() {
		x := finishCount()
		t.Logf("counted traffic: %v", x)
		if x.LostSilently != 0 || x.Dups != 0 || x.Disorder != 0 || x.RefusedDelivered != 0 || x.Acked == 0 {
			t.Errorf("counted traffic: %v; want messages acknowledged, none lost silently, no duplicate, none out of order, no refused publish delivered", x)
		}
	})
	t.Logf("whole test: %v", time.Since(start).Round(100*time.Millisecond))
}

func phase(t *testing.T, name string, f func()) {
	t.Helper()
	start := time.Now()
	t.Logf("--- %s", name)
	f()
	t.Logf("--- %s: done in %v", name, time.Since(start).Round(10*time.Millisecond))
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// buildStageRE finds, in the output of the classic builder, the image
// that ends the Dockerfile's build stage: the last one before the runtime
// stage's FROM.
var buildStageRE = regexp.MustCompile(`---> ([0-9a-f]{12})\s*\nStep \d+/\d+ : FROM \$\{RUNTIME_IMAGE\}`)

// tagBuildStage tags the last build stage that the output of
// `docker-compose up --build` shows as appBuildImage.
func tagBuildStage(t *testing.T, ctx context.Context, out string) {
	t.Helper()
	m := buildStageRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		t.Logf("no build stage image in the output of docker-compose up --build: the next run rebuilds it")
		return
	}
	if _, err := docker(ctx, "tag", m[len(m)-1][1], appBuildImage); err != nil {
		t.Error(err)
	}
}

// appVersion is stamped into the node image (RELAY_VERSION).
const appVersion = "e2e"

// upstreamImages maps each upstream image the Dockerfile (its GO_IMAGE and
// RUNTIME_IMAGE defaults) and docker-compose.yml name to its stand-in.
// Grafana has none (Debian does not package it): the test starts the
// monitoring profile's Prometheus only.
func upstreamImages(t *testing.T, s standins) map[string]string {
	t.Helper()
	df, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(df), "\n") {
		for arg, standin := range map[string]string{"GO_IMAGE": s.golang, "RUNTIME_IMAGE": s.runtime} {
			if v, ok := strings.CutPrefix(line, "ARG "+arg+"="); ok {
				m[strings.TrimSpace(v)] = standin
			}
		}
	}
	p := loadCompose(t, nil, "monitoring")
	for svc, standin := range map[string]string{"redis": s.redis, "lb": s.nginx, "prometheus": s.prometheus} {
		sc, err := p.GetService(svc)
		if err != nil {
			t.Fatal(err)
		}
		m[sc.Image] = standin
	}
	if len(m) != 5 {
		t.Fatalf("upstream images %v: want 5 (GO_IMAGE, RUNTIME_IMAGE, redis, lb, prometheus)", m)
	}
	return m
}

// checkAppImage checks the image's contract: version stamped, numeric
// non-root user, health check by the binary, port 8080.
func checkAppImage(t *testing.T, ctx context.Context) {
	t.Helper()
	out, err := docker(ctx, "run", "--rm", appImage, "version")
	if err != nil || !strings.Contains(out, appVersion) {
		t.Errorf("relay version = %q, %v; want the stamped version %s", out, err, appVersion)
	}
	out, err = docker(ctx, "image", "inspect", "--format",
		"{{.Config.User}}|{{json .Config.Healthcheck.Test}}|{{json .Config.ExposedPorts}}|{{json .Config.Entrypoint}}|{{.Size}}", appImage)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Split(strings.TrimSpace(out), "|")
	if len(f) != 5 {
		t.Fatalf("docker image inspect = %q", out)
	}
	if f[0] != "65532:65532" {
		t.Errorf("image user = %q, want 65532:65532", f[0])
	}
	if f[1] != `["CMD","/relay","healthcheck"]` {
		t.Errorf("image healthcheck = %s, want CMD /relay healthcheck", f[1])
	}
	if !strings.Contains(f[2], "8080/tcp") {
		t.Errorf("image exposes %s, want 8080/tcp", f[2])
	}
	if f[3] != `["/relay"]` {
		t.Errorf("image entrypoint = %s, want /relay", f[3])
	}
	size, _ := strconv.ParseInt(f[4], 10, 64)
	t.Logf("image %s: %.1f MB (on the stand-in runtime base; distroless static adds about 2 MB)", appImage, float64(size)/1e6)
}

// stack is one docker-compose project of the real docker-compose.yml,
// run in the repository's root as a user runs it.
type stack struct {
	project  string
	port     int // RELAY_PORT: the load balancer
	promPort int // RELAY_PROMETHEUS_PORT
	grafPort int // RELAY_GRAFANA_PORT (Grafana is not started)
	dir      string
}

// env is what the test sets besides -p: free ports, the node image's tag
// and its version.
func (st *stack) env() []string {
	return []string{
		"RELAY_BIND=127.0.0.1",
		"RELAY_PORT=" + strconv.Itoa(st.port),
		"RELAY_PROMETHEUS_PORT=" + strconv.Itoa(st.promPort),
		"RELAY_GRAFANA_PORT=" + strconv.Itoa(st.grafPort),
		"RELAY_IMAGE=" + appImage,
		"RELAY_VERSION=" + appVersion,
		"RELAY_HISTORY_SIZE=10000", // the counted traffic recovers with since
	}
}

func (st *stack) compose(ctx context.Context, args ...string) error {
	_, err := st.composeOut(ctx, args...)
	return err
}

// composeOut runs docker-compose -p project args… in the repository's root.
func (st *stack) composeOut(ctx context.Context, args ...string) (string, error) {
	c := command{dir: st.dir, env: st.env(), timeout: 3 * time.Minute}
	return c.run(ctx, "docker-compose", append([]string{"-p", st.project}, args...)...)
}

// lockedBuffer collects the output of the foreground `docker-compose up`.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// up runs `docker-compose up --build` in the foreground, as the README
// says, until every service is healthy; cleanup takes the project down
// with its volumes, which ends that command.
func up(t *testing.T, ctx context.Context) *stack {
	t.Helper()
	st := &stack{
		project:  projectPrefix + randHex(4),
		port:     freePort(t),
		promPort: freePort(t),
		grafPort: freePort(t),
		dir:      repoRoot(t),
	}
	cmd := exec.Command("docker-compose", "-p", st.project, "up", "--build")
	cmd.Dir = st.dir
	cmd.Env = append(dockerEnv(), st.env()...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	upStart := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		// Not the test's context: it may be done.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			if out, err := st.composeOut(ctx, "logs", "--no-color", "--tail", "60"); err == nil {
				t.Logf("docker-compose logs:\n%s", out)
			}
		}
		start := time.Now()
		if err := st.compose(ctx, "--profile", "monitoring", "down", "-v", "--remove-orphans", "-t", "10"); err != nil {
			t.Errorf("docker-compose down: %v", err)
		}
		t.Logf("down -v: %v", time.Since(start).Round(100*time.Millisecond))
		select {
		case err := <-exited:
			t.Logf("docker-compose up --build exited (%v) after down", err)
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			t.Errorf("docker-compose up --build still running a minute after down; killed")
			<-exited
		}
		if _, err := docker(ctx, "image", "prune", "-f"); err != nil {
			t.Errorf("docker image prune: %v", err)
		}
	})
	services := append([]string{"redis", "lb"}, relayServices...)
	deadline := time.Now().Add(12 * time.Minute)
	for _, name := range services {
		for {
			status := st.health(ctx, name)
			if status == "running healthy" {
				break
			}
			select {
			case err := <-exited:
				t.Fatalf("docker-compose up --build exited (%v) before %s was healthy:\n%s", err, name, tail(out.String(), 6000))
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not healthy within 12 min of docker-compose up --build (%q):\n%s", name, status, tail(out.String(), 6000))
			}
			pollPause(ctx, time.Second)
		}
	}
	t.Logf("docker-compose up --build (build and start until %v healthy): %v", services, time.Since(upStart).Round(100*time.Millisecond))
	tagBuildStage(t, ctx, out.String())
	return st
}

// health is the state of service's container as `docker-compose ps`
// shows it: "running healthy" once its health check passes; empty while
// it has no container.
func (st *stack) health(ctx context.Context, service string) string {
	id, err := st.composeOut(ctx, "ps", "-q", service)
	if err != nil || strings.TrimSpace(id) == "" {
		return ""
	}
	out, err := docker(ctx, "inspect", "--format", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", strings.TrimSpace(id))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// projectPrefix starts the compose project name of every run.
const projectPrefix = "relaye2e"

// sweepStale removes what a run that was killed before its cleanup left
// behind: the containers, network and volume of projectPrefix projects
// older than any run can last.
func sweepStale(t *testing.T, ctx context.Context) {
	t.Helper()
	out, err := docker(ctx, "ps", "-a", "--filter", "label=com.docker.compose.project",
		"--format", `{{.ID}}|{{.Label "com.docker.compose.project"}}|{{.CreatedAt}}`)
	if err != nil {
		t.Fatal(err)
	}
	stale := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.SplitN(line, "|", 3)
		if len(f) != 3 || !strings.HasPrefix(f[1], projectPrefix) {
			continue
		}
		created, err := time.Parse("2006-01-02 15:04:05 -0700 MST", f[2])
		if err != nil || time.Since(created) < 30*time.Minute {
			continue
		}
		stale[f[1]] = append(stale[f[1]], f[0])
	}
	for project, ids := range stale {
		t.Logf("removing project %s left by an earlier run", project)
		docker(ctx, append([]string{"rm", "-f", "-v"}, ids...)...)
		docker(ctx, "network", "rm", project+"_default")
		for _, v := range []string{"redis-data", "prometheus-data", "grafana-data"} {
			docker(ctx, "volume", "rm", project+"_"+v)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// awaitScraped asks Prometheus's HTTP API, on its published port, for
// up{job="relay"} until every node's target is up == 1: the scrapes are
// periodic, so the test polls, bounded to 90 s.
func (st *stack) awaitScraped(t *testing.T, ctx context.Context) {
	t.Helper()
	q := url.Values{"query": {`up{job="relay"}`}}
	u := fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?%s", st.promPort, q.Encode())
	want := make([]string, len(relayServices))
	for i, name := range relayServices {
		want[i] = name + ":8080=1"
	}
	deadline := time.Now().Add(90 * time.Second)
	var got []string
	var last string
	for time.Now().Before(deadline) {
		got, last = promUp(ctx, u)
		if slices.Equal(got, want) {
			t.Logf("prometheus: %s", last)
			return
		}
		pollPause(ctx, time.Second)
	}
	t.Fatalf("prometheus %s: got %v (last answer %s), want %v within 90 s", u, got, last, want)
}

// promUp returns instance=value of each series of Prometheus's answer to
// an instant query at u, sorted, and the answer itself.
func promUp(ctx context.Context, u string) ([]string, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  []any
			}
		}
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Status != "success" {
		return nil, fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
	var got []string
	for _, s := range r.Data.Result {
		if len(s.Value) == 2 {
			got = append(got, fmt.Sprintf("%s=%v", s.Metric["instance"], s.Value[1]))
		}
	}
	slices.Sort(got)
	return got, string(body)
}

// awaitHealthy polls the container's Docker health status (Docker offers
// no event to wait on here).
func (st *stack) awaitHealthy(t *testing.T, ctx context.Context, service string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var status string
	for time.Now().Before(deadline) {
		if status = st.health(ctx, service); status == "running healthy" {
			return
		}
		pollPause(ctx, 500*time.Millisecond)
	}
	t.Fatalf("%s not healthy within 90 s: %q", service, status)
}

// pollPause waits d between two polls of state that no event announces
// (container health, nginx's view of a node), or until ctx ends.
func pollPause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (st *stack) url(scheme, path string) string {
	return fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, st.port, path)
}

func (st *stack) get(t *testing.T, ctx context.Context, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, st.url("http", path), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// awaitReady polls GET /readyz through the load balancer (no event
// exists for readiness) until every node has answered want: the body
// names the node that answered. Without a node in the body it settles for
// n answers of want in a row (the load balancer spreads them).
func (st *stack) awaitReady(t *testing.T, ctx context.Context, want, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	seen := map[string]string{} // node -> last body with want
	row := 0
	var got int
	var body string
	for time.Now().Before(deadline) {
		got, body = st.get(t, ctx, "/readyz")
		var r struct {
			Node string `json:"node"`
		}
		json.Unmarshal([]byte(body), &r)
		switch {
		case got == want && r.Node != "":
			seen[r.Node] = body
			if len(seen) == len(relayServices) {
				for node, b := range seen {
					t.Logf("GET /readyz on %s = %d %s", node, want, b)
				}
				return
			}
			continue
		case got == want:
			if row++; row >= n {
				t.Logf("GET /readyz = %d %s (%d in a row)", got, body, n)
				return
			}
			continue
		case r.Node != "":
			delete(seen, r.Node)
		}
		row = 0
		pollPause(ctx, 250*time.Millisecond)
	}
	t.Fatalf("GET /readyz through the load balancer: last %d %s; nodes that answered %d: %v; want all of %v within 60 s",
		got, body, want, slices.Sorted(maps.Keys(seen)), relayServices)
}

// client is one WebSocket connection through the load balancer, with a
// goroutine reading its messages.
type client struct {
	conn *websocket.Conn
	node string
	msgs chan string
	done chan struct{} // closed when the reader stops; err says why
	err  error
}

func (st *stack) dial(t *testing.T, ctx context.Context, channel string) *client {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, st.url("ws", "/ws/"+channel), nil)
	if err != nil {
		t.Fatalf("dial through the load balancer: %v", err)
	}
	node := resp.Header.Get("X-Relay-Node")
	if node == "" {
		conn.CloseNow()
		t.Fatalf("upgrade response has no X-Relay-Node header: %v", resp.Header)
	}
	c := &client{conn: conn, node: node, msgs: make(chan string, 1024), done: make(chan struct{})}
	go c.read(ctx)
	return c
}

func (c *client) read(ctx context.Context) {
	defer close(c.done)
	for {
		_, data, err := c.conn.Read(ctx)
		if err != nil {
			c.err = err
			return
		}
		select {
		case c.msgs <- string(data):
		case <-ctx.Done():
			c.err = ctx.Err()
			return
		}
	}
}

func (c *client) send(ctx context.Context, msg string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.conn.Write(ctx, websocket.MessageText, []byte(msg))
}

// expect waits for msg, skipping others (sync probes, earlier rounds).
func (c *client) expect(msg string, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case m := <-c.msgs:
			if m == msg {
				return nil
			}
		case <-c.done:
			return fmt.Errorf("client on %s closed before %q arrived: %w", c.node, msg, c.err)
		case <-timer.C:
			return fmt.Errorf("client on %s: %q did not arrive within %v", c.node, msg, timeout)
		}
	}
}

// clients is the test's pool of connections.
type clients struct {
	mu   sync.Mutex
	list []*client
}

func (p *clients) add(c *client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = append(p.list, c)
}

func (p *clients) remove(c *client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = slices.DeleteFunc(p.list, func(x *client) bool { return x == c })
	c.conn.CloseNow()
	<-c.done
}

func (p *clients) all() []*client {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.list)
}

func (p *clients) on(node string) []*client {
	return slices.DeleteFunc(p.all(), func(c *client) bool { return c.node != node })
}

func (p *clients) nodes() []string {
	var nodes []string
	for _, c := range p.all() {
		if !slices.Contains(nodes, c.node) {
			nodes = append(nodes, c.node)
		}
	}
	slices.Sort(nodes)
	return nodes
}

func (p *clients) perNode() map[string]int {
	m := map[string]int{}
	for _, c := range p.all() {
		m[c.node]++
	}
	return m
}

func (p *clients) closeAll() {
	for _, c := range p.all() {
		p.remove(c)
	}
}

// exchange proves cross-node delivery: first it waits until every node's
// subscription is live (probes sent until each client has seen one),
// then one client per node sends a message that every other client must
// receive, exactly as sent.
func (p *clients) exchange(t *testing.T, what string) {
	t.Helper()
	cs := p.all()
	if len(cs) < 2 {
		t.Fatalf("exchange among %d clients", len(cs))
	}
	senders := map[string]*client{}
	for _, c := range cs {
		if senders[c.node] == nil {
			senders[c.node] = c
		}
	}
	for _, s := range senders {
		p.sync(t, s, cs)
	}
	for node, s := range senders {
		msg := fmt.Sprintf("msg-%s-from-%s", randHex(4), node)
		if err := s.send(t.Context(), msg); err != nil {
			t.Fatalf("send from %s: %v", node, err)
		}
		var wg sync.WaitGroup
		errs := make([]error, len(cs))
		for i, c := range cs {
			if c == s {
				continue
			}
			wg.Go(func() { errs[i] = c.expect(msg, 10*time.Second) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("%s: message from %s: %v", what, node, err)
		}
	}
	t.Logf("%s: %d clients on %v exchanged messages", what, len(cs), p.nodes())
}

// sync sends probes from sender until every other client has received
// one: after that, the channel's subscription is live on every node that
// has a client. The probes are polling (the nodes announce no
// subscription event), bounded to 30 s.
func (p *clients) sync(t *testing.T, sender *client, cs []*client) {
	t.Helper()
	prefix := "sync-" + randHex(4) + "-"
	rest := slices.DeleteFunc(slices.Clone(cs), func(c *client) bool { return c == sender })
	seen := make([]bool, len(rest))
	left := len(rest)
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := 0; left > 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("probes from %s reached %d of %d clients within 30 s", sender.node, len(rest)-left, len(rest))
		}
		if err := sender.send(t.Context(), prefix+strconv.Itoa(i)); err != nil {
			t.Fatalf("probe from %s: %v", sender.node, err)
		}
		<-tick.C
		for j, c := range rest {
		drain:
			for {
				select {
				case m := <-c.msgs:
					if strings.HasPrefix(m, prefix) && !seen[j] {
						seen[j] = true
						left--
					}
				case <-c.done:
					t.Fatalf("client on %s closed while syncing: %v", c.node, c.err)
				default:
					break drain
				}
			}
		}
	}
}
