//go:build !linux

package rawio

import (
	"net"
	"syscall"
)

// rawConn is nil off Linux: rawio reads and writes through the connection.
func rawConn(net.Conn) syscall.RawConn { return nil }

// read, write and peekQuiet are never called off Linux: rawConn is nil.
func (o *op) read(uintptr) bool  { return true }
func (o *op) write(uintptr) bool { return true }
func peekQuiet(uintptr) bool     { return false }
