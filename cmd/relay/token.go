package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/node/auth"
)

// tokenCmd is `relay token`: it mints an HS256 token with
// RELAY_TOKEN_HMAC_SECRET, for trying things out (docs/AUTH.md).
func tokenCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sub := fs.String("sub", "", "the user id (sub); empty = an anonymous token")
	channels := fs.String("channels", "", "comma-separated channel patterns the user may subscribe to, e.g. 'chat:*,user:{sub}'")
	publish := fs.String("publish", "", "comma-separated channel patterns the user may publish to")
	ttl := fs.Duration("ttl", time.Hour, "lifetime of the token; 0 = it never expires")
	info := fs.String("info", "", "JSON object kept with the connection, e.g. '{\"name\":\"Alice\"}'")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: relay token [flags]

Prints an HS256 token signed with RELAY_TOKEN_HMAC_SECRET, with iss and aud
from RELAY_TOKEN_ISSUER and RELAY_TOKEN_AUDIENCE when set. For trying things
out: in production your backend mints tokens (docs/AUTH.md).

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "relay token: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	secret := os.Getenv("RELAY_TOKEN_HMAC_SECRET")
	if len(secret) < 32 {
		fmt.Fprintln(stderr, "relay token: set RELAY_TOKEN_HMAC_SECRET to the node's secret (at least 32 bytes)")
		return 2
	}
	c := auth.Claims{Channels: splitList(*channels), Publish: splitList(*publish)}
	c.Subject = *sub
	now := time.Now()
	c.IssuedAt = jwt.NewNumericDate(now)
	if *ttl > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(*ttl))
	}
	c.Issuer = os.Getenv("RELAY_TOKEN_ISSUER")
	if aud := os.Getenv("RELAY_TOKEN_AUDIENCE"); aud != "" {
		c.Audience = jwt.ClaimStrings{aud}
	}
	if *info != "" {
		if !json.Valid([]byte(*info)) {
			fmt.Fprintln(stderr, "relay token: -info is not valid JSON")
			return 2
		}
		c.Info = json.RawMessage(*info)
	}
	tok, err := auth.MintHS256([]byte(secret), c)
	if err != nil {
		fmt.Fprintln(stderr, "relay token:", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
