//go:build !unix

package bench

import (
	"errors"
	"syscall"
)

// bindNoPort binds as the kernel does: the option is Linux's.
func bindNoPort(string, string, syscall.RawConn) error { return nil }

// raiseFileLimit cannot raise a limit this system does not have.
func raiseFileLimit() (uint64, error) {
	return 0, errors.New("the file-descriptor limit is not raised on this system")
}

// selfCPUSeconds is not measured on this system: the generator's own CPU
// figures read 0.
func selfCPUSeconds() float64 { return 0 }
