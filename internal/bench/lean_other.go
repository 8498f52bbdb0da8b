//go:build !linux

package bench

import (
	"context"
	"errors"
	"net/url"
)

// leanSupported is false off Linux: every subscriber has a goroutine that
// reads it through coder/websocket.
const leanSupported = false

var errNoLean = errors.New("lean subscribers need Linux (epoll)")

type leanSub struct{}

type leanLoops struct{ r *runner }

func (*leanLoops) close() {}

func (*runner) dialLean(context.Context, *url.URL, string) (*leanSub, string, error) {
	return nil, "", errNoLean
}

func (*runner) attach(*leanSub, *conn) error { return errNoLean }

func (*leanSub) closeGraceful() {}

func (*leanSub) closeNow() {}
func (*leanSub) release()  {}
