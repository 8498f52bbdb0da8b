package pubsub

import "github.com/prometheus/client_golang/prometheus"

// redisMetric is one counter of RedisStats as a Prometheus metric.
type redisMetric struct {
	desc  *prometheus.Desc
	value func(RedisStats) uint64
}

func newRedisMetrics() []redisMetric {
	m := func(name, help string, value func(RedisStats) uint64) redisMetric {
		return redisMetric{prometheus.NewDesc(name, help, nil, nil), value}
	}
	return []redisMetric{
		m("relay_broker_reconnects_total", "Redis subscriber connections re-established.", func(s RedisStats) uint64 { return s.Reconnects }),
		m("relay_broker_resubscribes_total", "Reconnects that subscribed live channels again (a possible gap in delivery).", func(s RedisStats) uint64 { return s.Resubscribes }),
		m("relay_broker_probe_failures_total", "Probes that did not come back through their subscriber connection in time.", func(s RedisStats) uint64 { return s.ProbeFailures }),
		m("relay_broker_teardowns_total", "Subscriber connections torn down and replaced because they went silent.", func(s RedisStats) uint64 { return s.Teardowns }),
		m("relay_broker_publish_errors_total", "Publishes Redis did not take.", func(s RedisStats) uint64 { return s.PublishErrors }),
		m("relay_broker_published_total", "Messages published to Redis.", func(s RedisStats) uint64 { return s.Published }),
		m("relay_broker_slot_moves_total", "Redis Cluster: live channels subscribed again on another master after their slot moved or their master failed over (a possible gap in delivery).", func(s RedisStats) uint64 { return s.Moves }),
		m("relay_broker_pipelines_total", "Pipelined round trips to Redis (publishes share them).", func(s RedisStats) uint64 { return s.Pipelines }),
	}
}

// Per subscriber connection (shard): its index, or in cluster mode its
// master's address.
var (
	shardUpDesc = prometheus.NewDesc("relay_broker_shard_up",
		"1 when the Redis subscriber connection is live and its last probe came back.", []string{"shard"}, nil)
	shardChannelsDesc = prometheus.NewDesc("relay_broker_shard_channels",
		"Channels the Redis subscriber connection carries.", []string{"shard"}, nil)
)

// Describe implements prometheus.Collector: the counters of Stats, named
// relay_broker_*_total, and the gauges of each subscriber connection
// (docs/OPERATIONS.md lists them).
func (b *Redis) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range b.metrics {
		ch <- m.desc
	}
	ch <- shardUpDesc
	ch <- shardChannelsDesc
}

// Collect implements prometheus.Collector from Stats and the shards'
// state, without I/O.
func (b *Redis) Collect(ch chan<- prometheus.Metric) {
	s := b.Stats()
	for _, m := range b.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.value(s)))
	}
	for _, sh := range b.shardList() {
		sh.mu.Lock()
		n := len(sh.chans)
		sh.mu.Unlock()
		sh.hmu.Lock()
		up := sh.status == "" && sh.probeErr == nil
		sh.hmu.Unlock()
		v := 0.0
		if up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(shardUpDesc, prometheus.GaugeValue, v, sh.name())
		ch <- prometheus.MustNewConstMetric(shardChannelsDesc, prometheus.GaugeValue, float64(n), sh.name())
	}
}
