// Package browsertest drives the demo page and relay.js in headless
// Chromium (Debian's chromium) against real relay processes and a real
// redis-server. A Go module of its own, so that chromedp stays out of the
// service's go.mod; `make browser-check` runs it.
package browsertest
