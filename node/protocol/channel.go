package protocol

import (
	"fmt"
	"strings"
)

// MaxChannelLen is the longest channel name, in bytes.
const MaxChannelLen = 255

// ReservedPrefix starts the names of Relay's own channels (such as the
// probes of the Redis broker); clients cannot use them.
const ReservedPrefix = "__relay"

// ValidChannel reports why name is not a valid channel name, or nil.
// Names are 1-255 bytes of A-Z a-z 0-9 and _ - : . @ / =, not starting with
// ReservedPrefix. The namespace of a channel is the part before its first ':'.
func ValidChannel(name string) error {
	if len(name) == 0 {
		return fmt.Errorf("channel name is empty")
	}
	if len(name) > MaxChannelLen {
		return fmt.Errorf("channel name is %d bytes, longer than %d", len(name), MaxChannelLen)
	}
	if strings.HasPrefix(name, ReservedPrefix) {
		return fmt.Errorf("channel names starting with %s are reserved", ReservedPrefix)
	}
	for i := 0; i < len(name); i++ {
		if !channelByte[name[i]] {
			return fmt.Errorf("channel name has %q at byte %d; allowed are A-Z a-z 0-9 _ - : . @ / =", name[i], i)
		}
	}
	return nil
}

var channelByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_-:.@/=" {
		t[c] = true
	}
	return t
}()
