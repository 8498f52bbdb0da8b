package auth

import "github.com/golang-jwt/jwt/v5"

// MintHS256 signs c with secret as an HS256 token, as `relay token` does
// for trying things out; production tokens come from the app's backend.
func MintHS256(secret []byte, c Claims) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}
