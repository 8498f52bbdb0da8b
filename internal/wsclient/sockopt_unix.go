//go:build unix

package wsclient

import "syscall"

// ReadBufferControl returns a net.Dialer Control function that sets the
// socket's receive buffer to size bytes before it connects.
func ReadBufferControl(size int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
		})
		if err != nil {
			return err
		}
		return serr
	}
}
