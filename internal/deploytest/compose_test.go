package deploytest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

// relayServices are the node services of docker-compose.yml.
var relayServices = []string{"relay-1", "relay-2", "relay-3"}

// loadCompose loads docker-compose.yml as today's `docker compose` does,
// with schema validation, interpolating from env only, with the given
// profiles enabled.
func loadCompose(t *testing.T, env []string, profiles ...string) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithName("relay"),
		cli.WithEnv(env),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithProfiles(profiles),
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
		"proxy_http_version 1.1", "proxy_read_timeout", "proxy_connect_timeout", "max_fails=", "fail_timeout=",
		"least_conn;", "location = /metrics {\n            return 404;", "location = /readyz/details {\n            return 404;"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("deploy/nginx.conf lacks %q", want)
		}
	}

	if hc := lb.HealthCheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "/lb-healthz") {
		t.Errorf("lb healthcheck = %+v, want a GET of /lb-healthz", lb.HealthCheck)
	}

	// The monitoring profile is off unless asked for.
	for _, name := range []string{"prometheus", "grafana"} {
		if _, err := p.GetService(name); err == nil {
			t.Errorf("%s runs without --profile monitoring", name)
		}
	}

	// The published address and port can be moved.
	p2 := loadCompose(t, []string{"RELAY_PORT=18080", "RELAY_BIND=0.0.0.0"})
	if lb2, err := p2.GetService("lb"); err != nil || lb2.Ports[0].Published != "18080" || lb2.Ports[0].HostIP != "0.0.0.0" {
		t.Errorf("RELAY_PORT/RELAY_BIND do not move the published port: %+v", lb2.Ports)
	}
}

// TestComposeMonitoring checks the files of the profile monitoring:
// Prometheus scrapes every node on its own port inside the compose
// network, Grafana gets the shipped dashboard and Prometheus as its data
// source. The end-to-end test runs the Prometheus half for real; Grafana
// has no stand-in (Debian does not package it), so this is its test.
func TestComposeMonitoring(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t, nil, "monitoring")
	svc := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := p.GetService(name)
		if err != nil {
			t.Fatalf("service %s with --profile monitoring: %v", name, err)
		}
		if !slices.Equal(s.Profiles, []string{"monitoring"}) {
			t.Errorf("%s: profiles = %v, want [monitoring]", name, s.Profiles)
		}
		return s
	}
	mounts := func(s types.ServiceConfig, src, target string) bool {
		return slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeBind && v.Source == filepath.Join(root, src) && v.Target == target && v.ReadOnly
		})
	}
	published := func(s types.ServiceConfig, target uint32, port string) {
		t.Helper()
		if len(s.Ports) != 1 || s.Ports[0].Target != target || s.Ports[0].Published != port || s.Ports[0].HostIP != "127.0.0.1" {
			t.Errorf("%s ports = %+v, want 127.0.0.1:%s->%d by default", s.Name, s.Ports, port, target)
		}
	}
	pinned := func(s types.ServiceConfig, repo string) {
		t.Helper()
		tag, ok := strings.CutPrefix(s.Image, repo+":")
		if !ok || tag == "" || tag == "latest" {
			t.Errorf("%s image = %q, want %s with a pinned tag", s.Name, s.Image, repo)
		}
	}

	prom := svc("prometheus")
	pinned(prom, "prom/prometheus")
	published(prom, 9090, "9090")
	if !mounts(prom, "deploy/prometheus.yml", "/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus volumes = %+v, want deploy/prometheus.yml read-only on /etc/prometheus/prometheus.yml", prom.Volumes)
	}
	if !slices.Contains(prom.Command, "--config.file=/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus command = %v, want --config.file=/etc/prometheus/prometheus.yml", prom.Command)
	}
	var promConf struct {
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			MetricsPath   string `json:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	readYAML(t, filepath.Join(root, "deploy", "prometheus.yml"), &promConf)
	var targets []string
	for _, sc := range promConf.ScrapeConfigs {
		if sc.JobName != "relay" || (sc.MetricsPath != "" && sc.MetricsPath != "/metrics") {
			continue
		}
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	slices.Sort(targets)
	var want []string
	for _, name := range relayServices {
		// The node's own port: RELAY_ADDR of the service.
		addr := svc0(t, p, name).Environment["RELAY_ADDR"]
		if addr == nil || !strings.HasPrefix(*addr, ":") {
			t.Fatalf("%s: RELAY_ADDR = %v, want :PORT", name, addr)
		}
		want = append(want, name+*addr)
	}
	if !slices.Equal(targets, want) {
		t.Errorf("deploy/prometheus.yml job relay scrapes %v, want every node on its own port: %v", targets, want)
	}

	graf := svc("grafana")
	pinned(graf, "grafana/grafana")
	published(graf, 3000, "3000")
	if !mounts(graf, "deploy/grafana/provisioning", "/etc/grafana/provisioning") {
		t.Errorf("grafana volumes = %+v, want deploy/grafana/provisioning read-only on /etc/grafana/provisioning", graf.Volumes)
	}
	const dashboards = "/etc/grafana/dashboards"
	if !mounts(graf, "docs/grafana-dashboard.json", dashboards+"/relay.json") {
		t.Errorf("grafana volumes = %+v, want docs/grafana-dashboard.json read-only in %s", graf.Volumes, dashboards)
	}
	var ds struct {
		Datasources []struct {
			Type, URL string
			IsDefault bool `json:"isDefault"`
		}
	}
	readYAML(t, filepath.Join(root, "deploy/grafana/provisioning/datasources/prometheus.yml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" || !ds.Datasources[0].IsDefault {
		t.Errorf("grafana data sources = %+v, want the default one of type prometheus at http://prometheus:9090", ds.Datasources)
	}
	var dp struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		}
	}
	readYAML(t, filepath.Join(root, "deploy/grafana/provisioning/dashboards/relay.yml"), &dp)
	if len(dp.Providers) != 1 || dp.Providers[0].Type != "file" || dp.Providers[0].Options.Path != dashboards {
		t.Errorf("grafana dashboard providers = %+v, want one of type file on %s", dp.Providers, dashboards)
	}
	var dash struct {
		UID        string
		Templating struct {
			List []struct{ Name, Type, Query string }
		}
	}
	raw, err := os.ReadFile(filepath.Join(root, "docs", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil || dash.UID == "" {
		t.Fatalf("docs/grafana-dashboard.json: %v (uid %q)", err, dash.UID)
	}
	if !slices.ContainsFunc(dash.Templating.List, func(v struct{ Name, Type, Query string }) bool {
		return v.Type == "datasource" && v.Query == "prometheus"
	}) {
		t.Errorf("docs/grafana-dashboard.json has no data source variable of type prometheus: the provisioned data source would not be picked")
	}

	// Published ports move like the load balancer's.
	p2 := loadCompose(t, []string{"RELAY_PROMETHEUS_PORT=19090", "RELAY_GRAFANA_PORT=13000"}, "monitoring")
	for name, port := range map[string]string{"prometheus": "19090", "grafana": "13000"} {
		if s, err := p2.GetService(name); err != nil || s.Ports[0].Published != port {
			t.Errorf("%s: published port does not move with its variable: %+v", name, s.Ports)
		}
	}
}

func svc0(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestComposeCluster checks the profile cluster: a second stack on a
// three-shard Redis Cluster (three redis-server with cluster-enabled and
// a one-shot service that creates the cluster), three nodes configured by
// RELAY_REDIS_CLUSTER_ADDRS alone and their own load balancer, on a network
// of their own where the nodes answer to the names deploy/nginx.conf uses.
// No test runs it (the stand-in images have no Redis Cluster set-up); this
// is its test.
func TestComposeCluster(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t, nil, "cluster")
	svc := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := p.GetService(name)
		if err != nil {
			t.Fatalf("service %s with --profile cluster: %v", name, err)
		}
		if !slices.Equal(s.Profiles, []string{"cluster"}) {
			t.Errorf("%s: profiles = %v, want [cluster]", name, s.Profiles)
		}
		if _, ok := s.Networks["cluster"]; !ok || len(s.Networks) != 1 {
			t.Errorf("%s: networks = %v, want only cluster", name, s.Networks)
		}
		return s
	}
	shards := []string{"redis-shard-1", "redis-shard-2", "redis-shard-3"}
	var seeds []string
	for _, name := range shards {
		s := svc(name)
		if !strings.HasPrefix(s.Image, "redis:7") {
			t.Errorf("%s image = %q, want redis 7 (sharded pub/sub)", name, s.Image)
		}
		if cmd := strings.Join(s.Command, " "); !strings.Contains(cmd, "--cluster-enabled yes") {
			t.Errorf("%s command %q, want --cluster-enabled yes", name, cmd)
		}
		if hc := s.HealthCheck; hc == nil || !slices.Contains(hc.Test, "ping") {
			t.Errorf("%s healthcheck = %+v, want redis-cli ping", name, s.HealthCheck)
		}
		seeds = append(seeds, name+":6379")
	}

	init := svc("redis-cluster-init")
	script := strings.Join(init.Command, " ")
	for _, want := range append([]string{"redis-cli --cluster create", "--cluster-yes", "cluster_state:ok"}, shards...) {
		if !strings.Contains(script, want) {
			t.Errorf("redis-cluster-init command %q lacks %q", script, want)
		}
	}
	if init.Restart != "no" {
		t.Errorf("redis-cluster-init restart = %q, want no: it runs once", init.Restart)
	}
	for _, name := range shards {
		if d, ok := init.DependsOn[name]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("redis-cluster-init: depends_on = %+v, want %s: service_healthy", init.DependsOn, name)
		}
	}

	allowed := relayVars(t)
	ids := map[string]bool{}
	for _, name := range relayServices {
		ids[*svc0(t, loadCompose(t, nil), name).Environment["RELAY_NODE_ID"]] = true
	}
	nodes := []string{"relay-cluster-1", "relay-cluster-2", "relay-cluster-3"}
	for i, name := range nodes {
		s := svc(name)
		if s.Build == nil || s.Build.Context != root || s.Image != "relay:local" {
			t.Errorf("%s: build %+v image %q, want the one image built from the repository", name, s.Build, s.Image)
		}
		if a := s.Environment["RELAY_REDIS_CLUSTER_ADDRS"]; a == nil || *a != strings.Join(seeds, ",") {
			t.Errorf("%s: RELAY_REDIS_CLUSTER_ADDRS = %v, want %s", name, a, strings.Join(seeds, ","))
		}
		if u := s.Environment["RELAY_REDIS_URL"]; u != nil && *u != "" {
			t.Errorf("%s: RELAY_REDIS_URL = %q with the cluster's seeds: the node refuses two Redis modes", name, *u)
		}
		for k := range s.Environment {
			if !slices.Contains(allowed, k) {
				t.Errorf("%s: environment %s is not a variable relay knows", name, k)
			}
		}
		if id := s.Environment["RELAY_NODE_ID"]; id == nil || *id == "" || ids[*id] {
			t.Errorf("%s: RELAY_NODE_ID = %v, want one of its own", name, id)
		} else {
			ids[*id] = true
		}
		if d, ok := s.DependsOn["redis-cluster-init"]; !ok || d.Condition != types.ServiceConditionCompletedSuccessfully || len(s.DependsOn) != 1 {
			t.Errorf("%s: depends_on = %+v, want only redis-cluster-init: service_completed_successfully", name, s.DependsOn)
		}
		if n := s.Networks["cluster"]; n == nil || !slices.Equal(n.Aliases, []string{relayServices[i]}) {
			t.Errorf("%s: network cluster %+v, want the alias %s (deploy/nginx.conf's upstream)", name, n, relayServices[i])
		}
		if hc := s.HealthCheck; hc == nil || !slices.Equal([]string(hc.Test), []string{"CMD", "/relay", "healthcheck"}) {
			t.Errorf("%s: healthcheck = %+v, want CMD /relay healthcheck", name, s.HealthCheck)
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s publishes ports %+v: only the load balancer should", name, s.Ports)
		}
	}

	lb := svc("lb-cluster")
	if len(lb.Ports) != 1 || lb.Ports[0].Target != 80 || lb.Ports[0].Published != "8081" || lb.Ports[0].HostIP != "127.0.0.1" {
		t.Errorf("lb-cluster ports = %+v, want 127.0.0.1:8081->80 by default", lb.Ports)
	}
	if !slices.ContainsFunc(lb.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeBind && v.Source == filepath.Join(root, "deploy", "nginx.conf") && v.ReadOnly
	}) {
		t.Errorf("lb-cluster volumes = %+v, want deploy/nginx.conf read-only", lb.Volumes)
	}
	for _, name := range nodes {
		if d, ok := lb.DependsOn[name]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("lb-cluster: depends_on = %+v, want %s: service_healthy", lb.DependsOn, name)
		}
	}

	p2 := loadCompose(t, []string{"RELAY_CLUSTER_PORT=18081"}, "cluster")
	if lb2, err := p2.GetService("lb-cluster"); err != nil || lb2.Ports[0].Published != "18081" {
		t.Errorf("RELAY_CLUSTER_PORT does not move lb-cluster's published port: %+v", lb2.Ports)
	}
}
