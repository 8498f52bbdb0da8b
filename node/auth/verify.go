package auth

import (
	"context"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenBytes bounds a token: a longer one is refused as malformed
// without being parsed.
const MaxTokenBytes = 8 << 10

// Config configures a Verifier. The zero value verifies nothing: auth is
// off.
type Config struct {
	// StaticTokens are shared secrets that grant every channel, compared
	// in constant time.
	StaticTokens []string
	// HMACSecret verifies HS256, HS384 and HS512 tokens.
	HMACSecret []byte
	// PublicKeyFile is a PEM file with one public key (RSA: RS256/384/512
	// and PS256/384/512; ECDSA: ES256, ES384 or ES512 by curve; Ed25519:
	// EdDSA).
	PublicKeyFile string
	// JWKSURL and JWKSFile are key sets (RSA, EC and OKP keys; symmetric
	// keys are ignored), read at Run's start and again every JWKSRefresh,
	// and early when a token names a kid they lack. A key set that cannot
	// be read or parsed keeps the last good keys.
	JWKSURL     string
	JWKSFile    string
	JWKSRefresh time.Duration
	// HTTPClient fetches JWKSURL; nil means a client with a 10 s timeout.
	HTTPClient *http.Client
	// Issuer and Audience, when set, must be the token's iss and one of
	// its aud.
	Issuer   string
	Audience string
	// Leeway is the clock skew allowed for exp and nbf.
	Leeway time.Duration
}

// Verifier verifies tokens. It is safe for concurrent use; Run keeps its
// JWKS fresh.
type Verifier struct {
	cfg     Config
	log     *slog.Logger
	digests [][sha256.Size]byte
	public  any      // the PEM key
	pemAlgs []string // what the PEM key accepts
	jwks    *jwks    // nil without JWKSURL and JWKSFile
	parser  *jwt.Parser
	algs    []string // every accepted alg
}

var (
	hmacAlgs = []string{"HS256", "HS384", "HS512"}
	rsaAlgs  = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	// jwksAlgs are what a JWKS key may sign with; jwkset checks a key's own
	// alg when it has one, and jwt that the key's type fits the alg.
	jwksAlgs = append(slices.Clone(rsaAlgs), "ES256", "ES384", "ES512", "EdDSA")
)

// New returns a Verifier for cfg. It reads PublicKeyFile and JWKSFile,
// but fetches no URL: Run does.
func New(cfg Config, log *slog.Logger) (*Verifier, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := &Verifier{cfg: cfg, log: log}
	for _, t := range cfg.StaticTokens {
		v.digests = append(v.digests, sha256.Sum256([]byte(t)))
	}
	if len(cfg.HMACSecret) > 0 {
		if len(cfg.HMACSecret) < 32 {
			return nil, errors.New("RELAY_TOKEN_HMAC_SECRET: shorter than 32 bytes; use a random secret of at least 32 bytes (e.g. openssl rand -hex 32)")
		}
		v.algs = append(v.algs, hmacAlgs...)
	}
	if cfg.PublicKeyFile != "" {
		if err := v.readPublicKey(cfg.PublicKeyFile); err != nil {
			return nil, fmt.Errorf("RELAY_TOKEN_PUBLIC_KEY_FILE: %w", err)
		}
		v.algs = append(v.algs, v.pemAlgs...)
	}
	if cfg.JWKSURL != "" || cfg.JWKSFile != "" {
		if cfg.JWKSRefresh <= 0 {
			return nil, fmt.Errorf("RELAY_TOKEN_JWKS_REFRESH: %v; want a positive duration such as 1m", cfg.JWKSRefresh)
		}
		j, err := newJWKS(cfg, log)
		if err != nil {
			return nil, err
		}
		v.jwks = j
		v.algs = append(v.algs, jwksAlgs...)
	}
	slices.Sort(v.algs)
	v.algs = slices.Compact(v.algs)
	opts := []jwt.ParserOption{jwt.WithValidMethods(v.algs), jwt.WithLeeway(cfg.Leeway)}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

func (v *Verifier) readPublicKey(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if k, err := jwt.ParseRSAPublicKeyFromPEM(b); err == nil {
		v.public, v.pemAlgs = k, rsaAlgs
		return nil
	}
	if k, err := jwt.ParseECPublicKeyFromPEM(b); err == nil {
		v.public = k
		switch k.Curve {
		case elliptic.P256():
			v.pemAlgs = []string{"ES256"}
		case elliptic.P384():
			v.pemAlgs = []string{"ES384"}
		case elliptic.P521():
			v.pemAlgs = []string{"ES512"}
		default:
			return errors.New("ECDSA key on an unsupported curve; want P-256, P-384 or P-521")
		}
		return nil
	}
	if k, err := jwt.ParseEdPublicKeyFromPEM(b); err == nil {
		v.public, v.pemAlgs = k, []string{"EdDSA"}
		return nil
	}
	return errors.New("no RSA, ECDSA or Ed25519 public key in PEM form")
}

// Enabled reports whether connections need a token: static tokens or a
// key are configured.
func (v *Verifier) Enabled() bool { return len(v.digests) > 0 || v.JWT() }

// JWT reports whether signed tokens are accepted.
func (v *Verifier) JWT() bool { return len(v.algs) > 0 }

// Algorithms returns the accepted JWT algorithms, sorted.
func (v *Verifier) Algorithms() []string { return slices.Clone(v.algs) }

// Verify returns the identity of token, or an *Error saying why it is
// refused. A static token gives an unrestricted identity; a JWT the
// identity of its claims. It never logs the token.
func (v *Verifier) Verify(token string) (*Identity, error) {
	if token == "" {
		return nil, refuse(ReasonMissing, "no token")
	}
	if len(token) > MaxTokenBytes {
		return nil, refuse(ReasonMalformed, fmt.Sprintf("longer than %d bytes", MaxTokenBytes))
	}
	if len(v.digests) > 0 {
		d := sha256.Sum256([]byte(token))
		ok := 0
		for i := range v.digests {
			ok |= subtle.ConstantTimeCompare(d[:], v.digests[i][:])
		}
		if ok == 1 {
			return Unrestricted(), nil
		}
	}
	if !v.JWT() {
		return nil, refuse(ReasonBadToken, "not an accepted token")
	}
	var c Claims
	t, err := v.parser.ParseWithClaims(token, &c, v.key)
	if err != nil {
		return nil, v.classify(t, err)
	}
	var exp time.Time
	if c.ExpiresAt != nil {
		exp = c.ExpiresAt.Add(v.cfg.Leeway)
	}
	return newIdentity(&c, exp), nil
}

// errBadAlgorithm is the key function's answer to an alg the key of its
// family does not accept.
var errBadAlgorithm = errors.New("algorithm not accepted for this key")

// key is the jwt.Keyfunc: the key that verifies t, chosen by t's alg
// (HMAC algs only ever get the HMAC secret: no algorithm confusion) and
// then kid.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if slices.Contains(hmacAlgs, alg) {
		if len(v.cfg.HMACSecret) == 0 {
			return nil, errBadAlgorithm
		}
		return v.cfg.HMACSecret, nil
	}
	_, hasKID := t.Header["kid"]
	if v.jwks != nil && (hasKID || v.public == nil) {
		return v.jwks.key(t)
	}
	if v.public == nil || !slices.Contains(v.pemAlgs, alg) {
		return nil, errBadAlgorithm
	}
	return v.public, nil
}

// classify turns a jwt error into a refusal.
func (v *Verifier) classify(t *jwt.Token, err error) *Error {
	if t != nil && t.Method != nil && !slices.Contains(v.algs, t.Method.Alg()) || errors.Is(err, errBadAlgorithm) {
		alg := "?"
		if t != nil && t.Method != nil {
			alg = t.Method.Alg()
		}
		return refuse(ReasonBadAlgorithm, fmt.Sprintf("alg %q; accepted are %s", alg, strings.Join(v.algs, ", ")))
	}
	var r Reason
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		r = ReasonMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		r = ReasonUnknownKey
		if strings.Contains(err.Error(), "signing method") { // an alg jwt does not know
			r = ReasonBadAlgorithm
		}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		r = ReasonBadSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		r = ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		r = ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidAudience), missingClaim(err, "aud"):
		r = ReasonBadAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), missingClaim(err, "iss"):
		r = ReasonBadIssuer
	default:
		r = ReasonMalformed
	}
	return refuse(r, err.Error())
}

// Run keeps the JWKS fresh until ctx ends: it reads JWKSFile and JWKSURL
// at once, then every JWKSRefresh. Without a JWKS it returns at once.
func (v *Verifier) Run(ctx context.Context) {
	if v.jwks != nil {
		v.jwks.run(ctx, v.cfg.JWKSRefresh)
	}
}

// Status says what is wrong with the keys: notReady lists key sets never
// read well (the node should not take connections that need them), stale
// key sets whose last read failed and whose last good keys are in use.
func (v *Verifier) Status() (notReady, stale []string) {
	if v.jwks == nil {
		return nil, nil
	}
	return v.jwks.status()
}

// missingClaim reports whether err says the required claim is absent.
func missingClaim(err error, claim string) bool {
	return errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && strings.Contains(err.Error(), claim+" claim is required")
}
