package main

import (
	"strings"
	"testing"
)

// TestCheck: a called vulnerability of a required module fails, one of
// the standard library warns, and a vulnerable package or module that is
// not called says nothing.
func TestCheck(t *testing.T) {
	const stream = `{"config":{"protocol_version":"v1.0.0"}}
{"finding":{"osv":"GO-1","fixed_version":"v1.26.10","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Serve"}]}}
{"finding":{"osv":"GO-2","fixed_version":"v0.9.0","trace":[{"module":"example.com/m","version":"v0.8.0","package":"example.com/m/p"}]}}
`
	const called = `{"finding":{"osv":"GO-3","fixed_version":"v1.2.3","trace":[{"module":"example.com/m","version":"v1.2.0","package":"example.com/m/p","function":"F"},{"module":"github.com/relay-pubsub/relay","function":"main"}]}}
`
	for _, tt := range []struct {
		name, in   string
		wantFailed bool
		want       []string
	}{
		{"standard library only", stream, false, []string{
			"warning: the code calls stdlib v1.26.8: GO-1, fixed in Go 1.26.10",
			"vulncheck: no called vulnerability in a required module (1 in the Go standard library)"}},
		{"a required module", stream + called, true, []string{
			"warning: the code calls stdlib v1.26.8: GO-1",
			"FAIL: the code calls example.com/m v1.2.0: GO-3, fixed in v1.2.3"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			failed, err := check(strings.NewReader(tt.in), &out)
			if err != nil || failed != tt.wantFailed {
				t.Fatalf("check: failed %v, %v; want failed %v", failed, err, tt.wantFailed)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output %q lacks %q", out.String(), w)
				}
			}
			if strings.Contains(out.String(), "GO-2") {
				t.Errorf("output %q names GO-2, which the code does not call", out.String())
			}
		})
	}
	if _, err := check(strings.NewReader(""), &strings.Builder{}); err == nil {
		t.Error("check of no output: nil error, want one")
	}
	if _, err := check(strings.NewReader("{not json"), &strings.Builder{}); err == nil {
		t.Error("check of bad JSON: nil error, want one")
	}
}
