package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
)

// maxJWKSBytes bounds a JWKS document.
const maxJWKSBytes = 1 << 20

// jwks is the key set of JWKSFile and JWKSURL. keyfunc picks a key by kid
// from a jwkset memory storage; refresh replaces the storage's keys with
// those of each source's last good read.
type jwks struct {
	file, url string
	client    *http.Client
	log       *slog.Logger
	store     *jwkset.MemoryJWKSet
	kf        keyfunc.Keyfunc
	kick      chan struct{} // an unknown kid asks for an early refresh

	mu      sync.Mutex
	sources map[string]*jwksSource // by "file" and "url"
}

// jwksSource is what one source last gave.
type jwksSource struct {
	name   string // for logs and readiness: the path, or the URL without its query
	keys   []jwkset.JWK
	sum    [sha256.Size]byte // of the last good document
	loaded bool              // keys are from a good read
	err    error             // of the last read; nil when it was good
}

func newJWKS(cfg Config, log *slog.Logger) (*jwks, error) {
	j := &jwks{
		file: cfg.JWKSFile, url: cfg.JWKSURL, client: cfg.HTTPClient, log: log,
		store:   jwkset.NewMemoryStorage(),
		kick:    make(chan struct{}, 1),
		sources: make(map[string]*jwksSource),
	}
	if j.client == nil {
		j.client = &http.Client{Timeout: 10 * time.Second}
	}
	kf, err := keyfunc.New(keyfunc.Options{Storage: j.store})
	if err != nil {
		return nil, err
	}
	j.kf = kf
	if j.url != "" {
		u, err := url.Parse(j.url)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errors.New("RELAY_TOKEN_JWKS_URL: want an http or https URL")
		}
		j.sources["url"] = &jwksSource{name: u.Scheme + "://" + u.Host + u.Path}
	}
	if j.file != "" {
		j.sources["file"] = &jwksSource{name: j.file}
		// A file that is wrong at start is an operator's mistake to show
		// at once.
		if err := j.refreshFile(); err != nil {
			return nil, fmt.Errorf("RELAY_TOKEN_JWKS_FILE: %w", err)
		}
	}
	return j, nil
}

// key is the keyfunc of a token whose alg is asymmetric.
func (j *jwks) key(t *jwt.Token) (any, error) {
	k, err := j.kf.KeyfuncCtx(context.Background())(t)
	if errors.Is(err, jwkset.ErrKeyNotFound) {
		select {
		case j.kick <- struct{}{}:
		default:
		}
	}
	return k, err
}

// run reads the sources every interval, and early after an unknown kid
// (at most once a second), until ctx ends.
func (j *jwks) run(ctx context.Context, interval time.Duration) {
	j.refresh(ctx)
	t := time.NewTicker(interval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-j.kick:
			if time.Since(last) < time.Second {
				continue
			}
		}
		last = time.Now()
		j.refresh(ctx)
	}
}

// refresh reads every source once.
func (j *jwks) refresh(ctx context.Context) {
	if j.file != "" {
		if err := j.refreshFile(); err != nil {
			j.log.Warn("jwks refresh failed; keeping the last good keys", "jwks", j.file, "err", err)
		}
	}
	if j.url != "" {
		if err := j.refreshURL(ctx); err != nil {
			j.log.Warn("jwks refresh failed; keeping the last good keys", "jwks", j.sources["url"].name, "err", err)
		}
	}
}

func (j *jwks) refreshFile() error {
	b, err := os.ReadFile(j.file)
	if err == nil && len(b) > maxJWKSBytes {
		err = fmt.Errorf("larger than %d bytes", maxJWKSBytes)
	}
	return j.update("file", b, err)
}

func (j *jwks) refreshURL(ctx context.Context) error {
	b, err := j.fetch(ctx)
	return j.update("url", b, err)
}

func (j *jwks) fetch(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a secret
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP status %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err == nil && len(b) > maxJWKSBytes {
		err = fmt.Errorf("larger than %d bytes", maxJWKSBytes)
	}
	return b, err
}

// update records what the read of source gave: the document b, or err.
// A good document different from the last replaces the source's keys.
func (j *jwks) update(source string, b []byte, err error) error {
	var keys []jwkset.JWK
	sum := sha256.Sum256(b)
	j.mu.Lock()
	s := j.sources[source]
	same := s.loaded && sum == s.sum
	j.mu.Unlock()
	if err == nil && !same {
		keys, err = parseJWKS(b)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	s.err = err
	if err != nil || same {
		return err
	}
	s.keys, s.sum, s.loaded = keys, sum, true
	var all []jwkset.JWK
	for _, s := range j.sources {
		all = append(all, s.keys...)
	}
	if err := j.store.KeyReplaceAll(context.Background(), all); err != nil {
		return err
	}
	j.log.Info("jwks loaded", "jwks", s.name, "keys", len(keys))
	return nil
}

// parseJWKS returns the asymmetric keys of the JWKS document b: at least
// one, or an error.
func parseJWKS(b []byte) ([]jwkset.JWK, error) {
	var set jwkset.JWKSMarshal
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&set); err != nil {
		return nil, fmt.Errorf("not a JWKS: %w", err)
	}
	var keys []jwkset.JWK
	for i, m := range set.Keys {
		if m.KTY == jwkset.KtyOct {
			continue // a shared secret has no place in a published key set
		}
		k, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		if errors.Is(err, jwkset.ErrUnsupportedKey) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no RSA, EC or OKP key")
	}
	return keys, nil
}

// status says what is wrong with the key sets: notReady when a source has
// never been read well (tokens it signs are refused), stale when its last
// read failed and its last good keys are in use.
func (j *jwks) status() (notReady, stale []string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, s := range j.sources {
		switch {
		case !s.loaded && s.err == nil:
			notReady = append(notReady, "jwks "+s.name+": not read yet")
		case !s.loaded:
			notReady = append(notReady, "jwks "+s.name+": "+s.err.Error())
		case s.err != nil:
			stale = append(stale, "jwks "+s.name+": keeping the last good keys: "+s.err.Error())
		}
	}
	return notReady, stale
}
