package node

import (
	"strconv"
	"sync"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/pubsub"
)

// metrics are the node's Prometheus metrics, registered on the registry
// given to New, which /metrics serves.
// Children of labelled vectors are resolved once, so the hot path only adds
// to counters, once per batch rather than once per message.
type metrics struct {
	reg *prometheus.Registry

	connections *prometheus.GaugeVec
	opened      *prometheus.CounterVec
	closed      *prometheus.CounterVec
	refused     *prometheus.CounterVec
	// tokensRefused counts refused tokens by reason (session.go).
	tokensRefused *prometheus.CounterVec

	received      *prometheus.CounterVec
	receivedBytes *prometheus.CounterVec
	sent          *prometheus.CounterVec
	sentBytes     *prometheus.CounterVec

	publishSeconds  prometheus.Histogram
	publishErrors   prometheus.Counter
	deliverySeconds prometheus.Histogram
	dropped         prometheus.Counter
	slowConsumers   prometheus.Counter

	closedByCode sync.Map // websocket.StatusCode -> prometheus.Counter
	byMode       map[mode]*modeMetrics
}

// modeMetrics are the children of the per-mode vectors for one mode.
type modeMetrics struct {
	connections   prometheus.Gauge
	opened        prometheus.Counter
	received      prometheus.Counter
	receivedBytes prometheus.Counter
	sent          prometheus.Counter
	sentBytes     prometheus.Counter
}

// modes lists every mode a connection can have, for the label values.
var modes = []mode{modeRaw, modeEcho, modeProto}

func newMetrics(n *Node, reg *prometheus.Registry) *metrics {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &metrics{reg: reg, byMode: make(map[mode]*modeMetrics)}
	m.connections = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "relay_connections", Help: "Open WebSocket connections, by mode."}, []string{"mode"})
	m.opened = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_connections_opened_total", Help: "WebSocket connections accepted, by mode."}, []string{"mode"})
	m.closed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_connections_closed_total", Help: "WebSocket connections closed, by close code (1006: ended without a close frame)."}, []string{"code"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_upgrades_refused_total", Help: "Upgrade requests refused before the upgrade, by HTTP status."}, []string{"status"})
	m.tokensRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_tokens_refused_total", Help: "Tokens refused (upgrades, connect and refresh commands), by reason (docs/AUTH.md)."}, []string{"reason"})
	for _, r := range auth.Reasons() {
		m.tokensRefused.WithLabelValues(string(r))
	}
	m.received = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_messages_received_total", Help: "Messages received from clients, by mode."}, []string{"mode"})
	m.receivedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_received_bytes_total", Help: "Payload bytes received from clients, by mode."}, []string{"mode"})
	m.sent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_messages_sent_total", Help: "Messages written to clients, by mode."}, []string{"mode"})
	m.sentBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relay_sent_bytes_total", Help: "Payload bytes written to clients, by mode."}, []string{"mode"})
	m.publishSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "relay_publish_duration_seconds", Help: "Time for the broker to accept a publish that waits for its answer (for Redis: the pipelined round trip); raw-mode publishes that do not wait are not in it.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.publishErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_publish_errors_total", Help: "Publishes the broker refused (e.g. Redis unavailable)."})
	m.deliverySeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "relay_delivery_latency_seconds", Help: "Time from the publishing node accepting a message to this node queueing it for its subscribers (clocks of both nodes).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_queue_dropped_messages_total", Help: "Messages dropped from the queues of connections closed as slow consumers."})
	m.slowConsumers = prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_slow_consumer_disconnects_total", Help: "Connections closed with 1013 because their outbound queue was full."})
	for _, c := range []prometheus.Collector{
		m.connections, m.opened, m.closed, m.refused, m.tokensRefused, m.received, m.receivedBytes, m.sent, m.sentBytes,
		m.publishSeconds, m.publishErrors, m.deliverySeconds, m.dropped, m.slowConsumers,
	} {
		f(c)
	}
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "relay_channels", Help: "Channels with at least one local subscriber (one broker subscription each)."},
		func() float64 { return float64(n.hub.channelCount()) }))
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "relay_subscriptions", Help: "Local subscriptions: connection and channel pairs."},
		func() float64 { return float64(n.hub.subscriptions.Load()) }))
	f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "relay_history_position_repairs_total", Help: "Channels repaired because a position check (RELAY_HISTORY_CHECK_INTERVAL) found a message the node had not delivered."},
		func() float64 { return float64(n.hub.positionRepairs.Load()) }))
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "relay_ready", Help: "1 when /readyz answers 200, else 0."},
		func() float64 {
			if len(n.notReady()) == 0 {
				return 1
			}
			return 0
		}))
	if hc, ok := n.broker.(pubsub.HealthChecker); ok {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "relay_broker_up", Help: "1 when the broker can take publishes and deliver messages, else 0."},
			func() float64 {
				if hc.Health() != nil {
					return 0
				}
				return 1
			}))
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Series that exist before their first event, so that rates and alerts
	// see a zero rather than nothing.
	for _, code := range []websocket.StatusCode{1000, 1001, 1006, 1008, 1009, 1011, 1012, 1013} {
		m.closedByCode.Store(code, m.closed.WithLabelValues(strconv.Itoa(int(code))))
	}
	for _, status := range []string{"400", "401", "503"} {
		m.refused.WithLabelValues(status)
	}
	for _, md := range modes {
		l := string(md)
		m.byMode[md] = &modeMetrics{
			connections:   m.connections.WithLabelValues(l),
			opened:        m.opened.WithLabelValues(l),
			received:      m.received.WithLabelValues(l),
			receivedBytes: m.receivedBytes.WithLabelValues(l),
			sent:          m.sent.WithLabelValues(l),
			sentBytes:     m.sentBytes.WithLabelValues(l),
		}
	}
	return m
}

// closedWith counts a connection closed with code.
func (m *metrics) closedWith(code websocket.StatusCode) {
	c, ok := m.closedByCode.Load(code)
	if !ok {
		c, _ = m.closedByCode.LoadOrStore(code, m.closed.WithLabelValues(strconv.Itoa(int(code))))
	}
	c.(prometheus.Counter).Inc()
}
