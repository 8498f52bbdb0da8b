package node_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/relay-pubsub/relay/internal/testenv"
)

// TestDashboardMetricsExist: every relay_ metric the Grafana dashboard and
// OPERATIONS.md name is one a node with Redis exports.
func TestDashboardMetricsExist(t *testing.T) {
	s := cluster(t, testenv.StartRedis(t), 1)[0]
	exported := make(map[string]bool)
	for k := range testenv.Metrics(t, s.URL) {
		name, _, _ := strings.Cut(k, "{")
		exported[strings.TrimSuffix(strings.TrimSuffix(name, "_count"), "_sum")] = true
	}
	dash, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(dash) {
		t.Fatal("docs/grafana-dashboard.json is not valid JSON")
	}
	ops, err := os.ReadFile("../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`relay_[a-z_]+`)
	for _, doc := range []struct {
		name string
		text []byte
	}{{"grafana-dashboard.json", dash}, {"OPERATIONS.md", ops}} {
		for _, m := range re.FindAllString(string(doc.text), -1) {
			base := strings.TrimSuffix(m, "_bucket")
			if !exported[base] {
				t.Errorf("%s names %s, which a node does not export", doc.name, m)
			}
		}
	}
}
