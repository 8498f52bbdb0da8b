package deploytest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// relayServices are the node services of docker-compose.yml.
var relayServices = []string{"relay-1", "relay-2", "relay-3"}

// loadCompose loads docker-compose.yml as today's `docker compose` does,
// with schema validation, interpolating from env only.
func loadCompose(t *testing.T, env []string) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithName("relay"),
		cli.WithEnv(env),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	p, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

func TestComposeFile(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// docker-compose 1.29 rejects these; today's docker compose warns.
	for _, line := range strings.Split(string(raw), "\n") {
		for _, key := range []string{"version:", "name:", "include:"} {
			if strings.HasPrefix(line, key) {
				t.Errorf("top-level %q: docker-compose 1.29 or docker compose rejects or warns about it", key)
			}
		}
		if strings.Contains(line, "start_interval:") {
			t.Errorf("healthcheck start_interval: docker-compose 1.29 rejects it")
		}
	}

	p := loadCompose(t, nil)
	svc := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := p.GetService(name)
		if err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		return s
	}
	names := p.ServiceNames()
	slices.Sort(names)
	if want := []string{"lb", "redis", "relay-1", "relay-2", "relay-3"}; !slices.Equal(names, want) {
		t.Errorf("services = %v, want %v", names, want)
	}

	// Redis: health-checked and persistent.
	redis := svc("redis")
	if hc := redis.HealthCheck; hc == nil || hc.Disable || !slices.Contains(hc.Test, "ping") || !strings.Contains(strings.Join(hc.Test, " "), "redis-cli") {
		t.Errorf("redis healthcheck = %+v, want redis-cli ping", redis.HealthCheck)
	}
	if cmd := strings.Join(redis.Command, " "); !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("redis command %q, want --appendonly yes", cmd)
	}
	if !slices.ContainsFunc(redis.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Target == "/data" && p.Volumes[v.Source].Name != ""
	}) {
		t.Errorf("redis volumes = %+v, want a named volume on /data", redis.Volumes)
	}
	if !strings.HasPrefix(redis.Image, "redis:") {
		t.Errorf("redis image = %q, want the upstream redis image", redis.Image)
	}

	// Nodes: built from the Dockerfile, wait for a healthy Redis, distinct
	// node ids, health-checked by the binary, only RELAY_ variables.
	allowed := relayVars(t)
	ids := map[string]string{}
	for _, name := range relayServices {
		s := svc(name)
		if s.Build == nil || s.Build.Context != repoRoot(t) {
			t.Errorf("%s: build = %+v, want the repository's Dockerfile", name, s.Build)
		}
		if s.Image != "relay:local" {
			t.Errorf("%s: image = %q, want relay:local (one image for all nodes)", name, s.Image)
		}
		if d, ok := s.DependsOn["redis"]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s: depends_on = %+v, want redis: service_healthy", name, s.DependsOn)
		}
		if hc := s.HealthCheck; hc == nil || !slices.Equal([]string(hc.Test), []string{"CMD", "/relay", "healthcheck"}) {
			t.Errorf("%s: healthcheck = %+v, want CMD /relay healthcheck", name, s.HealthCheck)
		}
		id := s.Environment["RELAY_NODE_ID"]
		if id == nil || *id == "" {
			t.Errorf("%s: RELAY_NODE_ID not set", name)
		} else if other, dup := ids[*id]; dup {
			t.Errorf("%s and %s share RELAY_NODE_ID %q", other, name, *id)
		} else {
			ids[*id] = name
		}
		if u := s.Environment["RELAY_REDIS_URL"]; u == nil || !strings.HasPrefix(*u, "redis://redis:6379") {
			t.Errorf("%s: RELAY_REDIS_URL = %v, want redis://redis:6379…", name, u)
		}
		for k := range s.Environment {
			if !slices.Contains(allowed, k) {
				t.Errorf("%s: environment %s is not a variable relay knows", name, k)
			}
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s publishes ports %+v: only the load balancer should", name, s.Ports)
		}
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") {
			t.Errorf("%s: want read_only and cap_drop ALL", name)
		}
		if s.StopGracePeriod == nil {
			t.Errorf("%s: stop_grace_period unset: docker stops after 10 s, before the drain ends", name)
		} else if d := s.Environment["RELAY_DRAIN_SECONDS"]; d != nil {
			if drain, err := time.ParseDuration(*d + "s"); err != nil || time.Duration(*s.StopGracePeriod) <= drain {
				t.Errorf("%s: stop_grace_period %v, RELAY_DRAIN_SECONDS %s: grace must be longer", name, time.Duration(*s.StopGracePeriod), *d)
			}
		}
	}

	// The load balancer: in front of every node, published on the
	// overridable port, configured from deploy/nginx.conf.
	lb := svc("lb")
	if !strings.HasPrefix(lb.Image, "nginx:") {
		t.Errorf("lb image = %q, want the upstream nginx image", lb.Image)
	}
	if len(lb.Ports) != 1 || lb.Ports[0].Target != 80 || lb.Ports[0].Published != "8080" || lb.Ports[0].HostIP != "127.0.0.1" {
		t.Errorf("lb ports = %+v, want 127.0.0.1:8080->80 by default", lb.Ports)
	}
	for _, name := range relayServices {
		if _, ok := lb.DependsOn[name]; !ok {
			t.Errorf("lb does not depend on %s: nginx resolves node names at start", name)
		}
	}
	if !slices.ContainsFunc(lb.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeBind && v.Source == filepath.Join(repoRoot(t), "deploy", "nginx.conf") &&
			v.Target == "/etc/nginx/nginx.conf" && v.ReadOnly
	}) {
		t.Errorf("lb volumes = %+v, want deploy/nginx.conf read-only on /etc/nginx/nginx.conf", lb.Volumes)
	}
	conf, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range relayServices {
		if strings.Count(string(conf), "server "+name+":8080") != 2 {
			t.Errorf("deploy/nginx.conf: %s:8080 should be in both upstreams (relay, relay_health)", name)
		}
		if !strings.Contains(string(conf), "server "+name+":8080") {
			t.Errorf("deploy/nginx.conf has no upstream server %s:8080", name)
		}
	}
	for _, want := range []string{"proxy_set_header Upgrade $http_upgrade", "proxy_set_header Connection $connection_upgrade",
		"proxy_http_version 1.1", "proxy_read_timeout", "proxy_connect_timeout", "max_fails=", "fail_timeout="} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("deploy/nginx.conf lacks %q", want)
		}
	}

	// The published address and port can be moved.
	p2 := loadCompose(t, []string{"RELAY_PORT=18080", "RELAY_BIND=0.0.0.0"})
	if lb2, err := p2.GetService("lb"); err != nil || lb2.Ports[0].Published != "18080" || lb2.Ports[0].HostIP != "0.0.0.0" {
		t.Errorf("RELAY_PORT/RELAY_BIND do not move the published port: %+v", lb2.Ports)
	}
}
