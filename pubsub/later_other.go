//go:build !linux

package pubsub

import (
	"context"
	"errors"
	"net"
	"time"
)

// laterSupported: later lanes (later.go) need Linux's system calls; here
// every raw publish waits for its answer (Publish).
const laterSupported = false

type laterSock struct{}

func (laterSock) ok() bool                       { return false }
func (laterSock) send([]byte) (int, error)       { return 0, errors.ErrUnsupported }
func (laterSock) recv([]byte) (int, bool, error) { return 0, false, errors.ErrUnsupported }
func (laterSock) close()                         {}
func (laterSock) wait(time.Duration)             {}

func laterDial(context.Context, func(context.Context) (net.Conn, error), []byte) (laterSock, error) {
	return laterSock{}, errors.ErrUnsupported
}
