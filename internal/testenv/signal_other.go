//go:build !unix

package testenv

import (
	"os"
)

// stopSignal and contSignal do not exist here: Redis.Pause and Resume
// fail the test (the harness runs redis-server on Unix systems only).
var stopSignal, contSignal os.Signal = unsupported{}, unsupported{}

type unsupported struct{}

func (unsupported) String() string { return "SIGSTOP/SIGCONT (not on this system)" }
func (unsupported) Signal()        {}
