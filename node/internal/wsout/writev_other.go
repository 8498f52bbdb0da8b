//go:build !linux

package wsout

import "syscall"

// nonblockingWrites is false off Linux: every batch goes through the
// connection's own writer, with blocking writes.
const nonblockingWrites = false

// iovecs is unused off Linux.
type iovecs = []struct{}

// writevNonblock is not called off Linux.
func writevNonblock(uintptr, *batch) syscall.Errno { return syscall.EINVAL }
