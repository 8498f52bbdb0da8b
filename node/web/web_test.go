package web

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPagePolicyHost: the request's Host goes into connect-src only when it
// is a plain host and port, so that it cannot widen the policy.
func TestPagePolicyHost(t *testing.T) {
	for _, tc := range []struct {
		host, want string
	}{
		{"localhost:8080", "connect-src 'self' ws://localhost:8080 wss://localhost:8080"},
		{"relay.example.com", "connect-src 'self' ws://relay.example.com wss://relay.example.com"},
		{"[::1]:8080", "connect-src 'self' ws://[::1]:8080 wss://[::1]:8080"},
		{"evil; script-src *", "connect-src 'self'"},
		{"a.com ws://b.com", "connect-src 'self'"},
		{"a.com,b.com", "connect-src 'self'"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = tc.host
		w := httptest.NewRecorder()
		ServePage(w, r)
		csp := w.Header().Get("Content-Security-Policy")
		if _, got, _ := strings.Cut(csp, "; connect-src "); "connect-src "+got != tc.want {
			t.Errorf("Host %q: policy ends %q, want %q", tc.host, "connect-src "+got, tc.want)
		}
	}
}
