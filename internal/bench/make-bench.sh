#!/usr/bin/env bash
# make-bench.sh: reproduce the benchmark table of issue 6 / docs/BENCHMARKS.md.
#
# Builds relay, then for each row starts a fresh redis-server on a free
# loopback port and two relay nodes against it (each on a port of its own
# choosing, read from its log), runs `relay bench` with the
# node and Redis PIDs, collects its JSON line, stops everything, and at the
# end prints the rows as a markdown table. Every row is bounded by timeout(1);
# everything the script started is killed on exit.
#
# Environment (all optional):
#   BENCH_ROWS       rows to run (default: fanout-1k-300 fanout-1k-600 fanout-1k-1000 fanout-10k-10 idle-10k;
#                    also known: channels-1k (100 channels x 10, 1,000 msg/s),
#                    channels-5k (1,000 channels x 5, 2,000 msg/s), connect-10k)
#   BENCH_MODE       raw or protocol (default raw)
#   BENCH_WARMUP     warm-up per publishing row (default 5s)
#   BENCH_DURATION   measurement window per publishing row (default 20s)
#   BENCH_IDLE_HOLD  hold of the idle row, long enough for the heap to settle (default 150s, as the reference)
#   BENCH_SIZE       message size in bytes (default 128)
#   BENCH_PUBLISHERS publishers per publishing row, spread over both nodes (default 20, so
#                    that each stays far below the nodes' per-connection publish limits:
#                    RELAY_RAW_PUBLISH_RATE and, in protocol mode, the command rate)
#   BENCH_OUT        directory for results.jsonl, table.md and logs (default: a new temp dir)
#   BENCH_RELAY      relay binary for the nodes (default: built from ./cmd/relay)
#   BENCH_BIN        binary that has the `bench` subcommand (default: BENCH_RELAY)
#   RELAY_*          node settings (e.g. RELAY_WRITE_DELAY=0) reach both nodes; the
#                    script sets RELAY_ADDR, RELAY_REDIS_URL and RELAY_NODE_ID itself
#   REDIS_SERVER     redis-server to run (default: from PATH)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
rows=${BENCH_ROWS:-"fanout-1k-300 fanout-1k-600 fanout-1k-1000 fanout-10k-10 idle-10k"}
mode=${BENCH_MODE:-raw}
warmup=${BENCH_WARMUP:-5s}
duration=${BENCH_DURATION:-20s}
idle_hold=${BENCH_IDLE_HOLD:-150s}
size=${BENCH_SIZE:-128}
publishers=${BENCH_PUBLISHERS:-20}
redis_server=${REDIS_SERVER:-redis-server}
out=${BENCH_OUT:-$(mktemp -d -t relay-bench-XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d -t relay-bench-run-XXXXXX)

pids=()
cleanup() {
	local status=$?
	stop_all
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_all ends every process this script started and waits for them.
stop_all() {
	local pid
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		# Bounded: SIGKILL whatever is still there after 10 s.
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	pids=()
}

die() { echo "make-bench: $*" >&2; exit 1; }

command -v "$redis_server" >/dev/null || die "redis-server not found (apt-get install redis-server)"
command -v timeout >/dev/null || die "timeout not found (coreutils)"

# Ports: each node listens on 127.0.0.1:0 and the script reads the address
# it logs; redis-server cannot bind port 0, so it starts on a random port and
# is started again on another when that one was taken (by another process
# between the choice and the bind: other builds and tests share the machine).

# wait_log waits (at most 15 s) until file $2 has a line matching $3 and
# process $1 is still alive; it prints the first match.
wait_log() {
	local line
	for _ in $(seq 150); do
		kill -0 "$1" 2>/dev/null || return 1
		line=$(grep -m1 -e "$3" "$2" 2>/dev/null) && { echo "$line"; return 0; }
		sleep 0.1
	done
	return 1
}

# start_redis NAME: starts redis-server on a free port (several tries); sets
# rport and rpid.
start_redis() {
	local try log
	for try in $(seq 10); do
		rport=$((20000 + RANDOM % 20000))
		log=$out/redis-$1.log
		: >"$log"
		"$redis_server" --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
			--dir "$work" --logfile "$log" --daemonize no &
		rpid=$!
		# "Ready to accept connections" is logged once the port is bound;
		# a port in use makes redis-server exit instead.
		if wait_log "$rpid" "$log" "Ready to accept connections" >/dev/null; then
			pids+=("$rpid")
			return
		fi
		kill -KILL "$rpid" 2>/dev/null || true
		wait "$rpid" 2>/dev/null || true
		echo "make-bench: redis-server did not start on port $rport (try $try), trying another" >&2
	done
	die "redis-server did not start (see $log)"
}

if [[ -z "${BENCH_RELAY:-}" ]]; then
	echo "make-bench: building relay" >&2
	(cd "$root" && go build -o "$work/relay" ./cmd/relay)
	BENCH_RELAY=$work/relay
fi
bench_bin=${BENCH_BIN:-$BENCH_RELAY}

# start_cluster starts redis-server and two nodes; sets urls and server_pids.
start_cluster() {
	local rport rpid
	start_redis "$1"
	local nodepids=()
	local urllist=()
	for i in 1 2; do
		local log=$out/node$i-$1.log line addr
		RELAY_ADDR=127.0.0.1:0 RELAY_REDIS_URL=redis://127.0.0.1:$rport/0 RELAY_NODE_ID=node-$i \
			"$BENCH_RELAY" >"$log" 2>&1 &
		local pid=$!
		pids+=("$pid")
		line=$(wait_log "$pid" "$log" '"msg":"listening"') || die "node $i did not start (see $log)"
		addr=$(sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' <<<"$line")
		[[ -n $addr ]] || die "node $i logged no address (see $log)"
		nodepids+=("$pid")
		urllist+=("ws://$addr")
	done
	urls=$(IFS=,; echo "${urllist[*]}")
	server_pids=$(IFS=,; echo "${nodepids[*]},$rpid")
	# Let the fresh processes settle before the baseline is taken.
	sleep 2
}

# run_row NAME BENCH-ARGS...: one row on a fresh cluster, bounded in time.
run_row() {
	local name=$1
	shift
	echo "make-bench: row $name" >&2
	start_cluster "$name"
	local status=0
	# The generator has its own -timeout; timeout(1) is the backstop.
	timeout --kill-after=10s 30m "$bench_bin" bench "$@" -mode "$mode" -url "$urls" -pids "$server_pids" \
		-progress off >>"$out/results.jsonl" 2>"$out/$name.txt" || status=$?
	cat "$out/$name.txt" >&2
	[[ $status -eq 0 ]] || echo "make-bench: row $name exited with status $status" >&2
	stop_all
}

: >"$out/results.jsonl"
pub=(-publishers "$publishers" -size "$size" -warmup "$warmup" -duration "$duration" -concurrency 128)
for row in $rows; do
	case $row in
	fanout-1k-300) run_row "$row" fanout -subs 1000 -rate 300 "${pub[@]}" ;;
	fanout-1k-600) run_row "$row" fanout -subs 1000 -rate 600 "${pub[@]}" ;;
	fanout-1k-1000) run_row "$row" fanout -subs 1000 -rate 1000 "${pub[@]}" ;;
	fanout-10k-10) run_row "$row" fanout -subs 10000 -rate 10 "${pub[@]}" ;;
	channels-1k) run_row "$row" channels -channels 100 -subs 1000 -rate 1000 -size "$size" \
		-warmup "$warmup" -duration "$duration" -concurrency 128 ;;
	channels-5k) run_row "$row" channels -channels 1000 -subs 5000 -rate 2000 -size "$size" \
		-warmup "$warmup" -duration "$duration" -concurrency 128 ;;
	idle-10k) run_row "$row" idle -subs 10000 -duration "$idle_hold" -concurrency 128 ;;
	connect-10k) run_row "$row" connect -subs 10000 -concurrency 128 -duration 60s ;;
	*) die "unknown row $row" ;;
	esac
done

"$bench_bin" bench table "$out/results.jsonl" | tee "$out/table.md"
echo "make-bench: results in $out (results.jsonl, table.md, logs)" >&2
