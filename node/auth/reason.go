package auth

import "errors"

// Reason is why a token was refused: a stable, machine-readable word that
// HTTP 401 bodies and protocol-mode errors carry as "reason". Clients branch
// on it; its values never change meaning.
type Reason string

// The reasons a token is refused.
const (
	ReasonMissing      Reason = "missing"       // no token where one is required
	ReasonMalformed    Reason = "malformed"     // not a JWT: parts, base64, JSON, claim types, or too long
	ReasonBadToken     Reason = "bad_token"     // not one of the static tokens, and no JWT keys are configured
	ReasonBadAlgorithm Reason = "bad_algorithm" // alg none, or an algorithm no configured key accepts
	ReasonBadSignature Reason = "bad_signature" // the signature does not match the key
	ReasonUnknownKey   Reason = "unknown_key"   // no configured key fits the token (e.g. its kid is not in the JWKS)
	ReasonExpired      Reason = "expired"       // exp has passed
	ReasonNotYetValid  Reason = "not_yet_valid" // nbf (or iat) is in the future
	ReasonBadAudience  Reason = "bad_audience"  // aud does not name RELAY_TOKEN_AUDIENCE
	ReasonBadIssuer    Reason = "bad_issuer"    // iss is not RELAY_TOKEN_ISSUER
	ReasonOtherUser    Reason = "other_user"    // a refresh token for another sub than the connection's
)

// Reasons returns every Reason, for metric labels and documentation.
func Reasons() []Reason {
	return []Reason{ReasonMissing, ReasonMalformed, ReasonBadToken, ReasonBadAlgorithm, ReasonBadSignature,
		ReasonUnknownKey, ReasonExpired, ReasonNotYetValid, ReasonBadAudience, ReasonBadIssuer, ReasonOtherUser}
}

// Error is a refused token. Its message never holds the token.
type Error struct {
	Reason Reason
	// Detail says more, for people; it may quote the library's error, which
	// never quotes the token.
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return "token refused: " + string(e.Reason)
	}
	return "token refused: " + string(e.Reason) + ": " + e.Detail
}

// ReasonOf returns the reason of a refused-token error, or "" when err is
// not one.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func refuse(r Reason, detail string) *Error { return &Error{Reason: r, Detail: detail} }
