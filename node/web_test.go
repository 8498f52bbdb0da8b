package node_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestBrowserFiles: GET /relay.js and GET / (the demo page) carry an ETag
// of their content, must be revalidated, and answer a matching
// If-None-Match with 304 and no body.
func TestBrowserFiles(t *testing.T) {
	s := single(t)
	for _, tc := range []struct {
		path, contentType, contains string
	}{
		{"/relay.js", "text/javascript; charset=utf-8", "export class Relay "},
		{"/", "text/html; charset=utf-8", `import { Relay } from '/relay.js';`},
	} {
		resp, err := http.Get(s.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != tc.contentType {
			t.Fatalf("GET %s = %d %q, want 200 %q", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.contentType)
		}
		if !strings.Contains(string(body), tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.contains)
		}
		tag := resp.Header.Get("ETag")
		if len(tag) < 3 || tag[0] != '"' || resp.Header.Get("Cache-Control") != "no-cache" {
			t.Errorf("GET %s: ETag %q, Cache-Control %q; want a strong ETag and no-cache", tc.path, tag, resp.Header.Get("Cache-Control"))
		}

		req, _ := http.NewRequest(http.MethodGet, s.URL+tc.path, nil)
		req.Header.Set("If-None-Match", tag)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 || resp.Header.Get("ETag") != tag {
			t.Errorf("GET %s with If-None-Match %s = %d, %d bytes, ETag %q; want 304, none, the same", tc.path, tag, resp.StatusCode, len(body), resp.Header.Get("ETag"))
		}
	}
}

// TestDemoPagePolicy: the demo page may load only its own inline script
// and style, relay.js and the node's WebSocket.
func TestDemoPagePolicy(t *testing.T) {
	s := single(t)
	resp, err := http.Get(s.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	host := strings.TrimPrefix(s.URL, "http://")
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self' 'sha256-", "style-src 'sha256-", "worker-src 'self'",
		"connect-src 'self' ws://" + host + " wss://" + host} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q allows something unsafe", csp)
	}
}
