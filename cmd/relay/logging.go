package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// durationString is the ReplaceAttr of the log handlers: a duration is
// logged as "15s", not as 15000000000 nanoseconds.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

// redisLogger routes what go-redis logs (dial failures of its connection
// pool, among others) into the node's log as warnings, so that the JSON
// log holds no plain-text lines. It implements go-redis's internal
// Logging interface.
type redisLogger struct {
	log *slog.Logger
}

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client", "detail", strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}

// setRedisLogger sends go-redis's own log lines to log. go-redis has one
// logger per process, so only main sets it.
func setRedisLogger(log *slog.Logger) {
	redis.SetLogger(redisLogger{log: log.With("component", "redis")})
}
