package main

import (
	"bytes"
	"flag"
	"os"
	"testing"

	"github.com/kelseyhightower/envconfig"
)

var update = flag.Bool("update", false, "rewrite the configuration table of README.md")

const readmeTableFormat = `| name | default | meaning |
|---|---|---|
{{range .}}| ` + "`{{usage_key .}}`" + ` | {{if usage_default .}}` + "`{{usage_default .}}`" + `{{end}} | {{usage_description .}} |
{{end}}`

// TestREADMEConfigTable keeps the README's configuration table the same as
// what relay --help prints; go test -run README -update rewrites it.
func TestREADMEConfigTable(t *testing.T) {
	var want bytes.Buffer
	if err := envconfig.Usagef(prefix, &config{}, &want, readmeTableFormat); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- config:begin -->\n", "<!-- config:end -->"
	i, j := bytes.Index(readme, []byte(begin)), bytes.Index(readme, []byte(end))
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q … %q markers", begin, end)
	}
	got := string(readme[i+len(begin) : j])
	if got == want.String() {
		return
	}
	if *update {
		out := append(append(append([]byte{}, readme[:i+len(begin)]...), want.Bytes()...), readme[j:]...)
		if err := os.WriteFile("../../README.md", out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md configuration table is stale; run go test ./cmd/relay -run README -update\ngot:\n%s\nwant:\n%s", got, want.String())
}
