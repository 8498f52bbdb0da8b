//go:build !unix && !windows

package wsclient

import (
	"errors"
	"syscall"
)

// ReadBufferControl returns a net.Dialer Control function that fails:
// this system has no SO_RCVBUF.
func ReadBufferControl(int) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error {
		return errors.New("wsclient: no SO_RCVBUF on this system")
	}
}
