//go:build unix

package testenv

import "syscall"

// The signals of Redis.Pause and Resume.
var stopSignal, contSignal = syscall.SIGSTOP, syscall.SIGCONT
