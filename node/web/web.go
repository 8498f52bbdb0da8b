// Package web is the browser side of Relay, embedded in the binary: relay.js,
// the browser SDK (one ES module, no build step), and the demo chat page a
// node serves at GET /. docs/CLIENTS.md documents the SDK.
package web

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"regexp"
	"time"
)

var (
	//go:embed relay.js
	script []byte
	//go:embed index.html
	page []byte
)

var (
	scriptETag = etag(script)
	pageETag   = etag(page)
	// pagePolicy is the page's Content-Security-Policy, less connect-src:
	// nothing but its own inline script and style (by hash), relay.js
	// (also as the shared worker) and the node's WebSocket.
	pagePolicy = "default-src 'none'; script-src 'self' " + inlineHash(page, "script") +
		"; style-src " + inlineHash(page, "style") +
		"; worker-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

// etag is a strong validator of content: a prefix of its SHA-256.
func etag(content []byte) string {
	sum := sha256.Sum256(content)
	return `"` + hex.EncodeToString(sum[:12]) + `"`
}

// inlineHash is the CSP source of the content of the first <tag> element
// of html: 'sha256-<base64>'.
func inlineHash(html []byte, tag string) string {
	start := bytes.Index(html, []byte("<"+tag))
	if start < 0 {
		panic("web: index.html has no <" + tag + ">")
	}
	start += bytes.IndexByte(html[start:], '>') + 1
	end := start + bytes.Index(html[start:], []byte("</"+tag+">"))
	if end < start {
		panic("web: index.html has no </" + tag + ">")
	}
	sum := sha256.Sum256(html[start:end])
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// ServeScript answers GET /relay.js. The file changes only with the binary,
// so it carries an ETag of its content and must be revalidated (no-cache):
// a browser that has it gets 304 Not Modified, and a new version is picked
// up at once.
func ServeScript(w http.ResponseWriter, r *http.Request) {
	serve(w, r, "text/javascript; charset=utf-8", scriptETag, script)
}

// ServePage answers a plain GET /: the demo chat page, built on relay.js
// only. Its Content-Security-Policy allows nothing but the node itself:
// relay.js, and WebSocket connections to the host the page came from.
func ServePage(w http.ResponseWriter, r *http.Request) {
	connect := "'self'"
	if validHost.MatchString(r.Host) {
		// Older browsers do not let 'self' cover ws: and wss:.
		connect += " ws://" + r.Host + " wss://" + r.Host
	}
	w.Header().Set("Content-Security-Policy", pagePolicy+"; connect-src "+connect)
	w.Header().Set("Referrer-Policy", "no-referrer")
	serve(w, r, "text/html; charset=utf-8", pageETag, page)
}

// validHost matches what may go into a CSP source: a host name or IP
// address and a port, nothing that could end the directive.
var validHost = regexp.MustCompile(`^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$`)

func serve(w http.ResponseWriter, r *http.Request, contentType, tag string, content []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", tag)
	// ServeContent answers If-None-Match with 304, HEAD and ranges.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
}
