package protocol

import (
	"fmt"
	"strconv"
)

// MaxIdempotencyKeyLen is the longest idempotency key, in bytes.
const MaxIdempotencyKeyLen = 128

// ValidIdempotencyKey reports why key is not a valid idempotency key, or
// nil: 1-128 bytes of printable ASCII other than space (0x21-0x7e), enough
// for a UUID or a hash.
func ValidIdempotencyKey(key string) error {
	if key == "" {
		return fmt.Errorf("idempotency_key is empty")
	}
	if len(key) > MaxIdempotencyKeyLen {
		return fmt.Errorf("idempotency_key is %d bytes, longer than %d", len(key), MaxIdempotencyKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return fmt.Errorf("idempotency_key has %q at byte %d; allowed is printable ASCII without space", key[i], i)
		}
	}
	return nil
}

// parseLimit reads the value of "limit": an integer from 0 to 2^31-1.
// Whether it is within the node's bound is the node's to say.
func parseLimit(raw []byte) (int, *Error) {
	n, err := strconv.ParseUint(string(raw), 10, 31)
	if err != nil {
		return 0, badRequest(`field "limit" must be an integer from 0`)
	}
	return int(n), nil
}

// unknownCommand is the error of a command name this version does not know.
func unknownCommand(name string) *Error {
	return &Error{Code: CodeUnknownCommand, Message: fmt.Sprintf(
		"unknown command %s; known are subscribe, unsubscribe, publish, history, presence, presence_stats, ping, connect and refresh", quoteShort(name))}
}
