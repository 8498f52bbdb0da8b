package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ErrRemote reports a target outside the loopback range without
// -allow-remote.
var ErrRemote = errors.New("target is not a loopback address (use -allow-remote to load a remote deployment)")

// parseTargets parses the comma-separated -url list into WebSocket base
// URLs (ws or wss, no trailing slash) and checks that each is on loopback
// unless allowRemote.
func parseTargets(list string, allowRemote bool) ([]*url.URL, error) {
	var out []*url.URL
	for s := range strings.SplitSeq(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("url %q: %w", s, err)
		}
		switch u.Scheme {
		case "ws", "wss":
		case "http":
			u.Scheme = "ws"
		case "https":
			u.Scheme = "wss"
		default:
			return nil, fmt.Errorf("url %q: scheme must be ws, wss, http or https", s)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("url %q: no host", s)
		}
		if !allowRemote && !isLoopbackHost(u.Hostname()) {
			return nil, fmt.Errorf("url %q: %w", s, ErrRemote)
		}
		u.Path = strings.TrimRight(u.Path, "/")
		u.RawQuery, u.Fragment = "", ""
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, errors.New("no -url given")
	}
	return out, nil
}

// isLoopbackHost reports whether host is "localhost" or a loopback IP. The
// dialer checks the resolved address again.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// dialer makes the HTTP clients for WebSocket handshakes. Past spreadAfter
// connections to one destination it binds further connections to source
// addresses 127.0.0.2, 127.0.0.3, … so that one destination can take more
// connections than one source address has ephemeral ports. Safe for
// concurrent use.
type dialer struct {
	allowRemote bool
	spreadAfter int // connections per destination before spreading; <= 0 never
	timeout     time.Duration
	tlsConfig   *tls.Config

	mu      sync.Mutex
	perDest map[string]int
	clients map[int]*http.Client // by source index; 0 is the kernel's choice
}

func newDialer(allowRemote bool, spreadAfter int, timeout time.Duration) *dialer {
	return &dialer{
		allowRemote: allowRemote,
		spreadAfter: spreadAfter,
		timeout:     timeout,
		perDest:     make(map[string]int),
		clients:     make(map[int]*http.Client),
	}
}

// maxSourceIndex keeps source addresses within 127.0.0.2–127.0.0.254.
const maxSourceIndex = 253

// sourceIndex returns the source address index of the k-th connection
// (from 0) to one destination: 0 (no binding) for the first spreadAfter,
// then 1, 2, … for each further block of spreadAfter.
func sourceIndex(k, spreadAfter int) int {
	if spreadAfter <= 0 || k < spreadAfter {
		return 0
	}
	return min(1+(k-spreadAfter)/spreadAfter, maxSourceIndex)
}

// sourceAddr returns the source address for index i >= 1: 127.0.0.(1+i).
func sourceAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i)})
}

// next returns the source address index of the next connection to u.
func (d *dialer) next(u *url.URL) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	dest := u.Host
	k := d.perDest[dest]
	d.perDest[dest] = k + 1
	if a, err := netip.ParseAddr(u.Hostname()); err == nil && !a.Is4() {
		return 0 // 127.0.0.x sources only reach IPv4 destinations
	}
	return sourceIndex(k, d.spreadAfter)
}

// dialFunc returns the dial function of source address index i.
func (d *dialer) dialFunc(i int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := &net.Dialer{Timeout: d.timeout, KeepAlive: -1}
	if i > 0 {
		nd.LocalAddr = &net.TCPAddr{IP: sourceAddr(i).AsSlice()}
		nd.Control = bindNoPort
	}
	return d.checked(nd)
}

// client returns the HTTP client for the next connection to u.
func (d *dialer) client(u *url.URL) *http.Client {
	i := d.next(u)
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.clients[i]; ok {
		return c
	}
	tr := &http.Transport{
		Proxy:               nil, // loopback targets never go through a proxy
		DialContext:         d.dialFunc(i),
		TLSClientConfig:     d.tlsConfig,
		TLSHandshakeTimeout: d.timeout,
		DisableCompression:  true,
		MaxIdleConns:        1,
		ForceAttemptHTTP2:   false,
	}
	c := &http.Client{Transport: tr}
	d.clients[i] = c
	return c
}

// checked wraps nd so that, unless remote targets are allowed, a name that
// resolved to a non-loopback address is refused before any byte is sent.
func (d *dialer) checked(nd *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := nd.DialContext(ctx, network, addr)
		if err != nil || d.allowRemote {
			return c, err
		}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
			c.Close()
			return nil, fmt.Errorf("dial %s: %w", addr, ErrRemote)
		}
		return c, nil
	}
}
