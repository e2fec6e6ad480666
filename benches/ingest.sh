#!/usr/bin/env bash
# The ingest benchmark: how close does the daemon's POST /v1/inbound/{tenant} get to its limits?
#
# For each producer linger.ms and each number of connections it measures, on 127.0.0.1 only:
#   noop       do-nothing HTTP server (the HTTP limit; once per connection count, it has no
#              linger)                                              ingest-ref noop
#   forwarder  HTTP → Kafka with the daemon's producer settings, no checks (the pipeline
#              limit)                                               ingest-ref forwarder
#   daemon     target/release/omnirouter -c config/default.toml run, every check on (HMAC, JSON
#              parse, normalize, dedupe), its embedded router off (router.enabled=false) so
#              the rows measure ingest alone
#   daemon+router  the same with the router on (it consumes and routes the published
#              messages in the same process); linger.ms=1 at BENCH_ROUTER_CONNECTIONS only
#   produce    raw rdkafka production with as many sends in flight as connections (the Kafka
#              limit)                                               ingest-ref produce
# HTTP load comes from wrk (benches/wrk/inbound.lua) with pre-signed ~510-byte bodies. Every
# configuration gets fresh processes (servers and an in-memory tansu broker), so no state
# carries over. CPU per request is utime+stime of the server process (all threads) over the
# measured run, from /proc/PID/stat.
#
# Environment (defaults in brackets):
#   BENCH_SECS [10]          seconds of each measured run
#   WARMUP_SECS [2]          seconds of the wrk warm-up before each measured run (0: none)
#   BENCH_THREADS [2]        wrk threads
#   BENCH_LINGERS ["1 5"]    producer linger.ms values
#   BENCH_CONNECTIONS ["16 64 256"]   connection counts (also produce's sends in flight)
#   BENCH_EXTRA_CONNECTIONS_LINGER1 [1024]   extra connection counts for linger.ms=1 only
#   BENCH_ROUTER_CONNECTIONS [256]   connection counts with an extra daemon+router row
#                            (linger.ms=1 only; empty: none)
#   BENCH_BODIES [200000]    distinct signed bodies (see the design note in wrk/inbound.lua)
#   BENCH_DEDUPE_CAPACITY [BENCH_BODIES/2]   the daemon's ingress.dedupe_capacity
#   BENCH_BODY_SIZE [510]    body size in bytes
#   BENCH_RETRIES [2], BENCH_MAX_OTHER_LOAD [0.25]   a measurement during which other processes
#                            kept more than BENCH_MAX_OTHER_LOAD CPUs busy is repeated up to
#                            BENCH_RETRIES times; the row with the least other load is kept
#   BENCH_SKIP_BUILD [0]     1: use the binaries already in $CARGO_TARGET_DIR/release
#   BENCH_SOAK_SECS [60]     seconds of the load-shedding soak at 2x the saturation rate
#                            (ingest-soak, table in soak.md; 0: no soak)
#   BENCH_SOAK_ONLY [0]      1: run only the soak
#   BENCH_SOAK_MAX_IN_FLIGHT [the daemon's default]   its ingress.max_in_flight in the soak
#   BENCH_SOAK_PIN [1]       the soak's generator on CPU 1, daemon and broker on CPU 0 (taskset)
#   BENCH_LATENCY_RATES ["100,1000"]   steady rates of the message → assignment latency run
#                            (assign-latency, table in latency.md; empty: none)
#   BENCH_LATENCY_SECS [10]  seconds measured per rate
#   BENCH_LATENCY_ONLY [0]   1: run only the latency run
#   BENCH_ROUTER_RATES ["5000,10000"]   conversation rates of the router-throughput run:
#                            assign-latency --resolve, each conversation resolved once
#                            assigned, so twice as many router inputs/s (table in router.md;
#                            empty: none)
#   BENCH_ROUTER_AGENTS [200], BENCH_ROUTER_CAPACITY [50]   its agents and their capacity
#   BENCH_ROUTER_DIRECT [1]  1: messages and resolves written to Kafka directly (the router
#                            alone); 0: through the daemon's HTTP API
#   BENCH_ROUTER_ONLY [0]    1: run only the router-throughput run
#   BENCH_MEMORY_CONVERSATIONS [1000000], BENCH_MEMORY_AGENTS [10000]   the state-memory run
#                            (resident memory per agent and per open conversation, table in
#                            memory.md; BENCH_MEMORY_CONVERSATIONS=0: none)
#   BENCH_MEMORY_ONLY [0]    1: run only the memory run
#   BENCH_OUT_DIR [<workspace>/target/bench]   where ingest.md and the run logs go
#   CARGO_TARGET_DIR [<workspace>/target], TANSU_BIN [~/.cache/omnirouter/tansu-0.6.0/bin/tansu]
#
# Output: $BENCH_OUT_DIR/ingest.md (printed at the end); raw wrk/produce output and server
# logs in $BENCH_OUT_DIR/ingest-run/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_SECS=${BENCH_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-2}
THREADS=${BENCH_THREADS:-2}
LINGERS=${BENCH_LINGERS:-1 5}
CONNECTIONS=${BENCH_CONNECTIONS:-16 64 256}
EXTRA_CONNECTIONS_LINGER1=${BENCH_EXTRA_CONNECTIONS_LINGER1-1024}
ROUTER_CONNECTIONS=${BENCH_ROUTER_CONNECTIONS-256}
RETRIES=${BENCH_RETRIES:-2}
MAX_OTHER_LOAD=${BENCH_MAX_OTHER_LOAD:-0.25}
BODIES=${BENCH_BODIES:-200000}
DEDUPE_CAPACITY=${BENCH_DEDUPE_CAPACITY:-$((BODIES / 2))}
BODY_SIZE=${BENCH_BODY_SIZE:-510}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
SOAK_SECS=${BENCH_SOAK_SECS:-60}
SOAK_ONLY=${BENCH_SOAK_ONLY:-0}
SOAK_MAX_IN_FLIGHT=${BENCH_SOAK_MAX_IN_FLIGHT:-}
SOAK_PIN=${BENCH_SOAK_PIN:-1}
LATENCY_RATES=${BENCH_LATENCY_RATES-100,1000}
LATENCY_SECS=${BENCH_LATENCY_SECS:-10}
LATENCY_ONLY=${BENCH_LATENCY_ONLY:-0}
ROUTER_RATES=${BENCH_ROUTER_RATES-5000,10000}
ROUTER_AGENTS=${BENCH_ROUTER_AGENTS:-200}
ROUTER_CAPACITY=${BENCH_ROUTER_CAPACITY:-50}
ROUTER_ONLY=${BENCH_ROUTER_ONLY:-0}
ROUTER_DIRECT=${BENCH_ROUTER_DIRECT:-1}
MEMORY_CONVERSATIONS=${BENCH_MEMORY_CONVERSATIONS:-1000000}
MEMORY_AGENTS=${BENCH_MEMORY_AGENTS:-10000}
MEMORY_ONLY=${BENCH_MEMORY_ONLY:-0}
# CPU pinning of servers and load generator (the soak only; empty: none).
SERVER_PIN=()
LOAD_PIN=()
OUT_DIR=${BENCH_OUT_DIR:-$ROOT/target/bench}
TANSU=${TANSU_BIN:-$HOME/.cache/omnirouter/tansu-0.6.0/bin/tansu}
WRK=${WRK_BIN:-wrk}
LUA_SCRIPT=$ROOT/benches/wrk/inbound.lua
TOPIC=omni.inbound.v1
TENANT=bench
SECRET="bench-hmac-$$-$RANDOM$RANDOM"
CLK_TCK=$(getconf CLK_TCK)
RUN_DIR=$OUT_DIR/ingest-run
REL=$CARGO_TARGET_DIR/release

log() { printf '[ingest %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

for v in BENCH_SECS WARMUP_SECS THREADS BODIES DEDUPE_CAPACITY BODY_SIZE RETRIES; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((BENCH_SECS > 0)) || die "BENCH_SECS must be at least 1"
[[ $SOAK_ONLY == 1 || $LATENCY_ONLY == 1 || $MEMORY_ONLY == 1 || $ROUTER_ONLY == 1 ]] || command -v "$WRK" >/dev/null || die "wrk not found (apt-get install wrk)"
command -v curl >/dev/null || die "curl not found"
[[ -x $TANSU ]] || die "tansu not found at $TANSU (set TANSU_BIN)"
if ((DEDUPE_CAPACITY * 2 > BODIES)); then
	log "warning: BENCH_DEDUPE_CAPACITY ($DEDUPE_CAPACITY) > BENCH_BODIES/2: bodies that come" \
		"round again may be answered from the dedupe cache (see wrk/inbound.lua)"
fi

# ---------------------------------------------------------------------------------------------
# Processes: everything started here is recorded and stopped on exit, bounded in time.

PIDS=()

# start_bg NAME CMD...: runs CMD in the background with output in $RUN_DIR/NAME.log; sets LAST_PID.
start_bg() {
	local name=$1
	shift
	"$@" >"$RUN_DIR/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
	local pid=$1 i
	if kill -TERM "$pid" 2>/dev/null; then
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid did not stop on SIGTERM within 10 s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do
		[[ $p == "$pid" ]] || keep+=("$p")
	done
	PIDS=("${keep[@]}")
}

cleanup() {
	local status=$? p
	trap - EXIT INT TERM
	for p in "${PIDS[@]}"; do
		stop_pid "$p"
	done
	# The signed bodies (~60 MB per 100k) are regenerated by every run.
	rm -f "$RUN_DIR/bodies.lua" "$RUN_DIR/.times"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A loopback port nothing listens on right now.
free_port() {
	local port
	for _ in $(seq 200); do
		port=$((20000 + RANDOM % 12000))
		if ! ss -Htln "sport = :$port" 2>/dev/null | grep -q .; then
			echo "$port"
			return 0
		fi
	done
	die "no free port found"
}

# wait_port PORT PID SECS NAME: until something accepts on 127.0.0.1:PORT (or PID dies).
wait_port() {
	local port=$1 pid=$2 secs=$3 name=$4 i
	for ((i = 0; i < secs * 20; i++)); do
		kill -0 "$pid" 2>/dev/null || die "$name exited; see $RUN_DIR/$name.log: $(tail -5 "$RUN_DIR/$name.log")"
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.05
	done
	die "$name did not listen on 127.0.0.1:$port within $secs s"
}

# utime+stime of PID in clock ticks (fields 14 and 15 of /proc/PID/stat; the command name in
# field 2 may contain spaces, so split after its closing parenthesis).
cpu_ticks() {
	local stat
	stat=$(<"/proc/$1/stat")
	stat=${stat##*) }
	# shellcheck disable=SC2086
	set -- $stat
	echo $((${12} + ${13}))
}

# Busy CPU time of the whole machine in clock ticks (user+nice+system+irq+softirq+steal), into
# the variable named $1.
machine_busy_ticks() {
	local _cpu user nice system _idle _iowait irq softirq steal _rest
	read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
	printf -v "$1" '%s' $((user + nice + system + irq + softirq + steal))
}

# CPU milliseconds of this shell's finished children (wrk, ingest-ref produce), into the
# variable named $1. `times` must run in this shell, not in a $(…) subshell, which has no
# children of its own.
children_cpu_ms() {
	times >"$RUN_DIR/.times"
	printf -v "$1" '%s' "$(tail -1 "$RUN_DIR/.times" |
		awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%d", s * 1000 }')"
}

# Window start/end for other_cpus: call window_start before a measured run and
# `other_cpus VAR OUR_TICKS` after it (not in a $(…) subshell) with the ticks our own processes
# (server, broker) used; wrk or produce are counted through children_cpu_ms. Sets VAR to how
# many CPUs everything else on the machine kept busy meanwhile.
window_start() {
	W_T0=$EPOCHREALTIME
	machine_busy_ticks W_BUSY0
	children_cpu_ms W_KIDS0
}
other_cpus() {
	local ours_ticks=$2 busy1 kids1
	machine_busy_ticks busy1
	children_cpu_ms kids1
	printf -v "$1" '%s' "$(awk -v b="$((busy1 - W_BUSY0))" -v o="$ours_ticks" -v k="$((kids1 - W_KIDS0))" \
		-v t0="$W_T0" -v t1="$EPOCHREALTIME" -v hz="$CLK_TCK" \
		'BEGIN { x = ((b - o) / hz - k / 1000) / (t1 - t0); if (x < 0) x = 0; printf "%.2f", x }')"
}

BROKER_PORT=
BROKER_PID=
start_broker() {
	local name=$1
	BROKER_PORT=$(free_port)
	local url=tcp://127.0.0.1:$BROKER_PORT
	start_bg "$name" "${SERVER_PIN[@]}" "$TANSU" broker --listener-url "$url" --advertised-listener-url "$url" \
		--storage-engine memory://tansu/
	BROKER_PID=$LAST_PID
	wait_port "$BROKER_PORT" "$BROKER_PID" 20 "$name"
}

# ---------------------------------------------------------------------------------------------
# Measurements. Each appends one tab-separated row to $RESULTS:
# kind linger conns msgs_s p50_us p99_us p999_us cpu_us broker_cpu_us other_cpus notes

RESULTS=
WRK_LINE=

# field NAME LINE: the value of NAME=… in a WRK_RESULT line.
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<" $2"; }

# run_wrk TAG PORT CONNS SECS START: one wrk run; sets WRK_LINE.
run_wrk() {
	local tag=$1 port=$2 conns=$3 secs=$4 start=$5 out
	out=$RUN_DIR/$tag.wrk.txt
	if ! WRK_READY_DIR=$RUN_DIR timeout -k 5 $((secs + 120)) "$WRK" -t"$THREADS" -c"$conns" -d"${secs}s" --timeout 10s \
		-s "$LUA_SCRIPT" "http://127.0.0.1:$port" -- "$BODIES_FILE" "$THREADS" "$start" \
		>"$out" 2>&1; then
		die "wrk failed for $tag: $(tail -5 "$out")"
	fi
	WRK_LINE=$(grep '^WRK_RESULT' "$out" | tail -1) || die "no WRK_RESULT in $out"
}

# metric NAME PORT: sum of a daemon counter over its label sets.
metric() {
	curl -sf --max-time 5 "http://127.0.0.1:$2/metrics" |
		awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s }'
}

# ticks_to_us TICKS COUNT: CPU microseconds per item.
ticks_to_us() {
	awk -v t="$1" -v c="$2" -v hz="$CLK_TCK" 'BEGIN { if (c > 0) printf "%.1f", t / hz * 1e6 / c; else print "-" }'
}

# measure_http KIND LINGER CONNS PORT PID: warm-up + measured wrk run against a started server.
measure_http() {
	local kind=$1 linger=$2 conns=$3 port=$4 pid=$5 tag start=0 notes=()
	tag=$kind-c$conns
	[[ $linger == - ]] || tag=$kind-l$linger-c$conns
	if ((WARMUP_SECS > 0)); then
		run_wrk "$tag.warmup" "$port" "$conns" "$WARMUP_SECS" 0
		# Each thread continues in the table exactly where its warm-up stopped.
		start=$(field next "$WRK_LINE")
	fi
	local rec0=0 dup0=0 rej0=0
	local routed0=0
	if [[ $kind == daemon* ]]; then
		routed0=$(metric omni_router_inputs_total "$port")
		rec0=$(metric omni_messages_received_total "$port")
		dup0=$(metric omni_ingress_duplicates_total "$port")
		rej0=$(metric omni_ingress_rejected_total "$port")
	fi
	local c0 b0=0
	window_start
	c0=$(cpu_ticks "$pid")
	[[ -n $BROKER_PID && $kind != noop ]] && b0=$(cpu_ticks "$BROKER_PID")
	run_wrk "$tag" "$port" "$conns" "$BENCH_SECS" "$start"
	local c1 b1=0 other
	c1=$(cpu_ticks "$pid")
	[[ -n $BROKER_PID && $kind != noop ]] && b1=$(cpu_ticks "$BROKER_PID")
	other_cpus other $((c1 - c0 + b1 - b0))

	local line=$WRK_LINE ok non2xx sockerr wraps
	ok=$(field ok "$line")
	non2xx=$(field non2xx "$line")
	wraps=$(field wraps "$line")
	sockerr=$(($(field connect_err "$line") + $(field read_err "$line") + $(field write_err "$line") + $(field timeout_err "$line")))
	((non2xx == 0)) || notes+=("$non2xx non-2xx")
	((sockerr == 0)) || notes+=("$sockerr socket errors/timeouts")
	local broker_cpu=-
	[[ $kind != noop ]] && broker_cpu=$(ticks_to_us $((b1 - b0)) "$ok")
	if [[ $kind == daemon* ]]; then
		local rec dup rej routed
		rec=$(($(metric omni_messages_received_total "$port") - rec0))
		dup=$(($(metric omni_ingress_duplicates_total "$port") - dup0))
		rej=$(($(metric omni_ingress_rejected_total "$port") - rej0))
		((dup == 0)) || notes+=("$dup deduped")
		((rej == 0)) || notes+=("$rej rejected: $(curl -sf --max-time 5 "http://127.0.0.1:$port/metrics" | grep '^omni_ingress_rejected_total' | sed 's/.*reason="\([^"]*\)".* \([0-9]*\)$/\1=\2/' | tr '\n' ' ')")
		# wrk stops counting responses in flight at the deadline; the daemon publishes them.
		((rec >= ok)) || notes+=("published $rec < $ok answered 2xx")
		# Bodies came round again (after the dedupe capacity evicted their ids, see inbound.lua).
		((wraps == 0 || dup > 0)) || notes+=("ids reused after eviction, 0 deduped")
		if [[ $kind == daemon+router ]]; then
			routed=$(($(metric omni_router_inputs_total "$port") - routed0))
			notes+=("router consumed $routed meanwhile")
		fi
	fi
	local notes_s
	notes_s=$(IFS=';'; echo "${notes[*]:-}")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$linger" "$conns" \
		"$(field ok_rps "$line")" "$(field p50_us "$line")" "$(field p99_us "$line")" \
		"$(field p999_us "$line")" "$(ticks_to_us $((c1 - c0)) "$ok")" "$broker_cpu" "$other" \
		"${notes_s//;/; }" >>"$RESULTS"
	log "$kind linger=$linger c=$conns: $(field ok_rps "$line") msgs/s, p99 $(field p99_us "$line") µs, CPU $(ticks_to_us $((c1 - c0)) "$ok") µs/req${notes_s:+ ($notes_s)}"
}

bench_noop() {
	local conns=$1 port
	port=$(free_port)
	start_bg "noop-c$conns" "$REL/ingest-ref" noop --listen "127.0.0.1:$port"
	local pid=$LAST_PID
	wait_port "$port" "$pid" 20 "noop-c$conns"
	BROKER_PID=
	measure_http noop - "$conns" "$port" "$pid"
	stop_pid "$pid"
}

bench_forwarder() {
	local linger=$1 conns=$2 port
	start_broker "tansu-forwarder-l$linger-c$conns"
	port=$(free_port)
	start_bg "forwarder-l$linger-c$conns" "$REL/ingest-ref" forwarder --listen "127.0.0.1:$port" \
		--brokers "127.0.0.1:$BROKER_PORT" --topic "$TOPIC" --linger-ms "$linger"
	local pid=$LAST_PID
	wait_port "$port" "$pid" 60 "forwarder-l$linger-c$conns"
	measure_http forwarder "$linger" "$conns" "$port" "$pid"
	stop_pid "$pid"
	stop_pid "$BROKER_PID"
	BROKER_PID=
}

# bench_daemon LINGER CONNS ROUTER: ROUTER=1 keeps the daemon's embedded router on (it then
# consumes and routes what the benchmark publishes, in the same process).
bench_daemon() {
	local linger=$1 conns=$2 router=$3 name kind=daemon enabled=false
	if [[ $router == 1 ]]; then
		kind=daemon+router
		enabled=true
	fi
	name=$kind-l$linger-c$conns
	start_broker "tansu-$name"
	start_daemon "$name" "$linger" "$enabled"
	measure_http "$kind" "$linger" "$conns" "$DAEMON_PORT" "$DAEMON_PID"
	stop_pid "$DAEMON_PID"
	stop_pid "$BROKER_PID"
	BROKER_PID=
}

# start_daemon NAME LINGER ROUTER_ENABLED [ENV=VALUE…]: the release daemon on a free port
# against the started broker, ready; sets DAEMON_PORT and DAEMON_PID.
DAEMON_PORT=
DAEMON_PID=
start_daemon() {
	local name=$1 linger=$2 enabled=$3 i
	shift 3
	DAEMON_PORT=$(free_port)
	# Only our overrides: drop OMNI__* and RUST_LOG inherited from the caller's shell.
	local unset_env=(-u RUST_LOG) v
	for v in $(compgen -e | grep '^OMNI' || true); do unset_env+=(-u "$v"); done
	start_bg "$name" "${SERVER_PIN[@]}" env "${unset_env[@]}" \
		OMNI__SERVER__LISTEN="127.0.0.1:$DAEMON_PORT" \
		OMNI__SERVER__SHUTDOWN_GRACE_SECS=5 \
		OMNI__KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT" \
		OMNI__KAFKA__LINGER_MS="$linger" \
		OMNI__TENANTS__BENCH__API_HMAC_SECRET="$SECRET" \
		OMNI__INGRESS__DEDUPE_WINDOW_SECS=600 \
		OMNI__INGRESS__DEDUPE_CAPACITY="$DEDUPE_CAPACITY" \
		OMNI__ROUTER__ENABLED="$enabled" \
		"$@" \
		"$REL/omnirouter" -c "$ROOT/config/default.toml" --log-format json run
	DAEMON_PID=$LAST_PID
	wait_port "$DAEMON_PORT" "$DAEMON_PID" 30 "$name"
	for ((i = 0; ; i++)); do
		curl -sf --max-time 3 "http://127.0.0.1:$DAEMON_PORT/readyz" >/dev/null && break
		kill -0 "$DAEMON_PID" 2>/dev/null || die "$name exited; see $RUN_DIR/$name.log"
		((i < 120)) || die "$name not ready within 60 s: $(curl -s "http://127.0.0.1:$DAEMON_PORT/readyz")"
		sleep 0.5
	done
}

# bench_soak: load shedding. One daemon as deployed (router on, default ingress.max_in_flight);
# ingest-soak measures its saturation rate (closed loop, 256 in flight, 10 s), then offers twice
# that rate open-loop for SOAK_SECS and reports the rate held, the share shed with 503 and the
# daemon's peak resident memory. Writes $OUT_DIR/soak.md.
bench_soak() {
	local name=soak token="soak-$$-$RANDOM" out
	# The load generator on one core, the daemon and the broker on the other: offering twice the
	# rate must not take the daemon's CPU away (on a shared core the generator's own work at 2x
	# would be measured as the daemon's collapse).
	if ((SOAK_PIN)) && (($(nproc) >= 2)) && command -v taskset >/dev/null; then
		SERVER_PIN=(taskset -c 0)
		LOAD_PIN=(taskset -c 1)
	fi
	start_broker "tansu-$name"
	local extra=(OMNI__TENANTS__BENCH__API_TOKEN="$token")
	[[ -z $SOAK_MAX_IN_FLIGHT ]] || extra+=(OMNI__INGRESS__MAX_IN_FLIGHT="$SOAK_MAX_IN_FLIGHT")
	start_daemon "$name" 1 "${BENCH_SOAK_ROUTER:-true}" "${extra[@]}"
	out=$RUN_DIR/$name.json
	if ! timeout -k 5 $((SOAK_SECS + 120)) "${LOAD_PIN[@]}" "$REL/ingest-soak" --url "http://127.0.0.1:$DAEMON_PORT/v1/inbound/$TENANT" \
		--token "$token" --pid "$DAEMON_PID" --seconds "$SOAK_SECS" --factor 2 \
		>"$out" 2>"$RUN_DIR/$name.txt"; then
		die "ingest-soak failed: $(tail -5 "$RUN_DIR/$name.txt")"
	fi
	kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon died during the soak; see $RUN_DIR/$name.log"
	local j
	j=$(tail -1 "$out")
	{
		echo "# Load-shedding soak"
		echo
		echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, daemon with its router ${BENCH_SOAK_ROUTER:-true}" \
			"and ingress.max_in_flight ${SOAK_MAX_IN_FLIGHT:-at its default}, tansu in-memory broker," \
			"ingest-soak on the same machine (127.0.0.1)$( ((${#LOAD_PIN[@]})) && echo ", pinned to CPU 1 with daemon and broker on CPU 0")." \
			"Saturation is the accepted rate with 256 requests always in flight for 10 s; the soak then" \
			"offers $(jq -r .offered_msgs_per_s <<<"$j") msgs/s (2×) open-loop for $(jq -r .seconds <<<"$j") s."
		echo
		echo "| saturation msgs/s | offered msgs/s | held msgs/s | held / saturation | worst second | shed 503 share | kafka 503 | errors | not sent | accepted p50 ms | accepted p99 ms | RSS before MiB | peak RSS MiB |"
		echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		jq -r '"| \(.saturation_msgs_per_s) | \(.offered_msgs_per_s) | \(.accepted_msgs_per_s) | \(.held_of_saturation) | \(.worst_second_msgs_per_s) | \(.shed_share) | \(.kafka_503) | \(.errors_or_timeouts) | \(.not_sent) | \(.accepted_p50_ms) | \(.accepted_p99_ms) | \(.rss_before_mib) | \(.rss_peak_hwm_mib) |"' <<<"$j"
	} >"$OUT_DIR/soak.md"
	cat "$OUT_DIR/soak.md"
	log "$(tail -1 "$RUN_DIR/$name.txt")"
	stop_pid "$DAEMON_PID"
	stop_pid "$BROKER_PID"
	BROKER_PID=
	SERVER_PIN=()
	LOAD_PIN=()
}

# run_assign_latency NAME TITLE DESCRIPTION RATES [ARGS…]: one daemon as deployed (router on)
# and an in-memory tansu; assign-latency at RATES with ARGS; writes $OUT_DIR/NAME.md (TITLE,
# then DESCRIPTION after the date and machine, then assign-latency's table) and prints it.
run_assign_latency() {
	local name=$1 title=$2 description=$3 rates=$4 token out
	shift 4
	token="$name-$$-$RANDOM"
	start_broker "tansu-$name"
	start_daemon "$name" 1 true OMNI__TENANTS__BENCH__API_TOKEN="$token" \
		OMNI__TENANTS__BENCH__AGENT_API_TOKEN="agent-$token"
	out=$RUN_DIR/$name.json
	if ! timeout -k 5 $((LATENCY_SECS * 4 + 300)) "$REL/assign-latency" --brokers "127.0.0.1:$BROKER_PORT" \
		--url "http://127.0.0.1:$DAEMON_PORT" --token "$token" --agent-token "agent-$token" \
		--tenant "$TENANT" --rates "$rates" --seconds "$LATENCY_SECS" --linger-ms 1 "$@" \
		>"$out" 2>"$RUN_DIR/$name.txt"; then
		die "assign-latency ($name) failed: $(tail -5 "$RUN_DIR/$name.txt")"
	fi
	{
		echo "# $title"
		echo
		echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, one daemon with its router on, tansu" \
			"in-memory broker, ${LATENCY_SECS}s per rate after a 2 s warm-up. $description"
		echo
		cat "$RUN_DIR/$name.txt"
	} >"$OUT_DIR/$name.md"
	cat "$OUT_DIR/$name.md"
	stop_pid "$DAEMON_PID"
	stop_pid "$BROKER_PID"
	BROKER_PID=
}

# bench_latency: message → assignment latency at steady rates. assign-latency creates agents
# through the command API, measures two plain Kafka hops on the same broker with the daemon's
# client settings (the reference), then posts new conversations open-loop at each rate and
# reads omni.routing.v1 for their assignments. Writes $OUT_DIR/latency.md.
bench_latency() {
	run_assign_latency latency "Message → assignment latency" \
		"New conversations posted open-loop (one request every 1/rate s). The reference is two plain
Kafka hops on the same broker with the daemon's client settings (linger.ms=1,
fetch.wait.max.ms=20, acks=all, idempotent, lz4): producer → topic → relay (consume, produce) →
topic → reader. The split of the daemon's time uses the Kafka timestamps of the inbound and
routing records (millisecond resolution)." "$LATENCY_RATES"
}

# bench_router: one tenant's router under load, inputs at twice the conversation rate.
# assign-latency --resolve posts new conversations open-loop at each rate and resolves each as
# soon as its assignment is read, so the router applies a message and a resolve per
# conversation while agents' capacity frees; "inbound → routing record" is how far the router
# lags. Writes $OUT_DIR/router.md.
bench_router() {
	local direct=() how="through the daemon's HTTP API"
	if [[ $ROUTER_DIRECT == 1 ]]; then
		direct=(--direct)
		how="written to the inbound and commands topics directly (as channel adapters and a CRM would)"
	fi
	run_assign_latency router "One tenant's router under load" \
		"New conversations posted open-loop and each resolved once its assignment is read, both
$how (router inputs/s = 2 × msgs/s), $ROUTER_AGENTS agents of capacity $ROUTER_CAPACITY. The
load generator, the daemon and the broker share the CPUs. The router keeps up while \"inbound →
routing record\" stays under a second." "$ROUTER_RATES" \
		--resolve --agents "$ROUTER_AGENTS" --capacity "$ROUTER_CAPACITY" "${direct[@]}"
}

# bench_memory: resident memory per agent and per open conversation. One daemon as deployed
# (router on) and an in-memory tansu; state-memory adds MEMORY_AGENTS agents and then
# MEMORY_CONVERSATIONS open conversations through the HTTP API and reads the daemon's VmRSS
# after each step. Writes $OUT_DIR/memory.md.
bench_memory() {
	local name=memory token="memory-$$-$RANDOM" out
	start_broker "tansu-$name"
	start_daemon "$name" 1 true OMNI__TENANTS__BENCH__API_TOKEN="$token" \
		OMNI__TENANTS__BENCH__AGENT_API_TOKEN="agent-$token"
	out=$RUN_DIR/$name.json
	if ! timeout -k 5 3600 "$REL/state-memory" --url "http://127.0.0.1:$DAEMON_PORT" \
		--token "$token" --agent-token "agent-$token" --tenant "$TENANT" --pid "$DAEMON_PID" \
		--agents "$MEMORY_AGENTS" --conversations "$MEMORY_CONVERSATIONS" \
		>"$out" 2>"$RUN_DIR/$name.txt"; then
		die "state-memory failed: $(tail -5 "$RUN_DIR/$name.txt")"
	fi
	{
		echo "# Resident memory per agent and per open conversation"
		echo
		echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, one daemon as deployed (router on," \
			"config/default.toml), one tenant, tansu in-memory broker. state-memory adds the agents" \
			"(online, one queue) through the command API, then one message from each new contact," \
			"until the router shows every conversation assigned; VmRSS before and after each step."
		echo
		cat "$RUN_DIR/$name.txt"
	} >"$OUT_DIR/memory.md"
	cat "$OUT_DIR/memory.md"
	stop_pid "$DAEMON_PID"
	stop_pid "$BROKER_PID"
	BROKER_PID=
}

bench_produce() {
	local linger=$1 conns=$2 name out line
	name=produce-l$linger-c$conns
	start_broker "tansu-$name"
	out=$RUN_DIR/$name.txt
	local b0 b1 other
	window_start
	b0=$(cpu_ticks "$BROKER_PID")
	if ! timeout -k 5 $((BENCH_SECS + 120)) "$REL/ingest-ref" produce \
		--brokers "127.0.0.1:$BROKER_PORT" --topic "$TOPIC" --linger-ms "$linger" \
		--concurrency "$conns" --size "$BODY_SIZE" --messages $((BENCH_SECS * 2000000)) \
		--seconds "$BENCH_SECS" >"$out" 2>&1; then
		die "ingest-ref produce failed: $(tail -5 "$out")"
	fi
	b1=$(cpu_ticks "$BROKER_PID")
	other_cpus other $((b1 - b0))
	line=$(grep '^{' "$out" | tail -1)
	local acked errors notes=
	acked=$(jq -r .acked <<<"$line")
	errors=$(jq -r .errors <<<"$line")
	((errors == 0)) || notes="$errors send errors"
	# The broker's CPU covers the warm-up too; it is a close upper bound.
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' produce "$linger" "$conns" \
		"$(jq -r '.msgs_per_s | floor' <<<"$line")" "$(jq -r .p50_us <<<"$line")" \
		"$(jq -r .p99_us <<<"$line")" "$(jq -r .p999_us <<<"$line")" \
		"$(ticks_to_us "$(jq -r '.cpu_ticks // 0' <<<"$line")" "$acked")" \
		"$(ticks_to_us $((b1 - b0)) "$acked")" "$other" "$notes" >>"$RESULTS"
	log "$(tail -1 "$out")"
	stop_pid "$BROKER_PID"
	BROKER_PID=
}

# with_retries CMD ARGS...: runs a measurement (which appends one row to $RESULTS). While other
# processes kept more than MAX_OTHER_LOAD CPUs busy during it (a shared machine), measures again,
# up to RETRIES times, and keeps the row measured with the least other load.
with_retries() {
	local attempt best='' best_other='' row other
	for ((attempt = 0; attempt <= RETRIES; attempt++)); do
		"$@"
		row=$(tail -n 1 "$RESULTS")
		sed -i '$d' "$RESULTS"
		other=$(cut -f10 <<<"$row")
		if [[ -z $best ]] || awk -v a="$other" -v b="$best_other" 'BEGIN { exit !(a < b) }'; then
			best=$row
			best_other=$other
		fi
		awk -v a="$other" -v m="$MAX_OTHER_LOAD" 'BEGIN { exit !(a <= m) }' && break
		if ((attempt < RETRIES)); then
			log "other processes kept $other CPUs busy during that run; measuring again"
		fi
	done
	printf '%s\n' "$best" >>"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# Table

# ms MICROSECONDS
ms() { awk -v u="$1" 'BEGIN { if (u == "" || u == "-") print "-"; else printf "%.2f", u / 1000 }'; }

write_table() {
	local md=$OUT_DIR/ingest.md
	declare -A fwd_rate fwd_p99
	local kind linger conns rate p50 p99 p999 cpu bcpu other notes
	while IFS=$'\t' read -r kind linger conns rate p50 p99 p999 cpu bcpu other notes; do
		if [[ $kind == forwarder ]]; then
			fwd_rate[$linger/$conns]=$rate
			fwd_p99[$linger/$conns]=$p99
		fi
	done <"$RESULTS"
	{
		echo "# Ingest benchmark"
		echo
		echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, ${BENCH_SECS}s runs after ${WARMUP_SECS}s warm-up," \
			"wrk -t$THREADS, ${BODY_SIZE}-byte HMAC-signed bodies, tansu in-memory broker," \
			"acks=all idempotent producer, everything on 127.0.0.1 (load generator, server and" \
			"broker share the CPUs)."
		echo
		echo "msgs/s counts 2xx answers (acked messages for produce). Latency is per request" \
			"(per ack for produce). CPU is utime+stime of the server process (of ingest-ref" \
			"for produce) per accepted message; broker CPU is tansu's. Ratios are" \
			"daemon / forwarder at the same linger.ms and connections. daemon rows run with the" \
			"embedded router off (ingest alone); daemon+router with it on, consuming and routing" \
			"the published messages in the same process. Other load is how many CPUs" \
			"processes other than the benchmark's own (load generator, server, broker) kept busy" \
			"during the measured run; (busy) marks rows above $MAX_OTHER_LOAD even after" \
			"$RETRIES retries: the machine was shared and those rows understate the limits." \
			"Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
		echo
		echo "| config | connections | msgs/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | broker CPU µs/msg | daemon/fwd msgs/s | daemon/fwd p99 | other load | notes |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
		while IFS=$'\t' read -r kind linger conns rate p50 p99 p999 cpu bcpu other notes; do
			local config=$kind rr=- rp=-
			[[ $linger == - ]] || config="$kind linger=$linger"
			if [[ $kind == daemon* && -n ${fwd_rate[$linger/$conns]:-} ]]; then
				rr=$(awk -v a="$rate" -v b="${fwd_rate[$linger/$conns]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
				rp=$(awk -v a="$p99" -v b="${fwd_p99[$linger/$conns]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
			fi
			awk -v a="$other" -v m="$MAX_OTHER_LOAD" 'BEGIN { exit !(a > m) }' && other="$other (busy)"
			printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$config" "$conns" \
				"$rate" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")" "$cpu" "$bcpu" "$rr" "$rp" "$other" "$notes"
		done <"$RESULTS"
	} >"$md"
	cat "$md"
	log "table written to $md"
}

# ---------------------------------------------------------------------------------------------
# Main

mkdir -p "$OUT_DIR"
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
RESULTS=$RUN_DIR/results.tsv
: >"$RESULTS"

if [[ $SKIP_BUILD != 1 ]]; then
	log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
	(cd "$ROOT" && cargo build --release -p omnirouter -p omni-benches)
fi
[[ -x $REL/omnirouter && -x $REL/ingest-soak && -x $REL/assign-latency && -x $REL/state-memory ]] || die "release binaries missing in $REL"
command -v jq >/dev/null || die "jq not found (apt-get install jq)"

if [[ $MEMORY_ONLY == 1 ]]; then
	((MEMORY_CONVERSATIONS > 0)) || die "BENCH_MEMORY_ONLY=1 needs BENCH_MEMORY_CONVERSATIONS > 0"
	bench_memory
	exit 0
fi
if [[ $ROUTER_ONLY == 1 ]]; then
	[[ -n $ROUTER_RATES ]] || die "BENCH_ROUTER_ONLY=1 needs BENCH_ROUTER_RATES"
	bench_router
	exit 0
fi
if [[ $LATENCY_ONLY == 1 ]]; then
	[[ -n $LATENCY_RATES ]] || die "BENCH_LATENCY_ONLY=1 needs BENCH_LATENCY_RATES"
	bench_latency
	exit 0
fi
if [[ $SOAK_ONLY == 1 ]]; then
	((SOAK_SECS > 0)) || die "BENCH_SOAK_ONLY=1 needs BENCH_SOAK_SECS > 0"
	bench_soak
	exit 0
fi
[[ -x $REL/ingest-ref ]] || die "release binaries missing in $REL"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BODIES_FILE=$RUN_DIR/bodies.lua
log "generating $BODIES signed bodies"
"$REL/ingest-ref" gen-requests --count "$BODIES" --secret "$SECRET" --tenant "$TENANT" \
	--size "$BODY_SIZE" --out "$BODIES_FILE" 2>>"$RUN_DIR/gen-requests.log"

# noop has no linger: it runs once per connection count, with the first linger that uses it.
declare -A noop_done=()
for linger in $LINGERS; do
	conns_list=$CONNECTIONS
	[[ $linger == 1 ]] && conns_list="$conns_list $EXTRA_CONNECTIONS_LINGER1"
	for conns in $conns_list; do
		log "== linger.ms=$linger, $conns connections =="
		if [[ -z ${noop_done[$conns]:-} ]]; then
			with_retries bench_noop "$conns"
			noop_done[$conns]=1
		fi
		with_retries bench_forwarder "$linger" "$conns"
		with_retries bench_daemon "$linger" "$conns" 0
		if [[ $linger == 1 && " $ROUTER_CONNECTIONS " == *" $conns "* ]]; then
			with_retries bench_daemon "$linger" "$conns" 1
		fi
		with_retries bench_produce "$linger" "$conns"
	done
done

write_table
if [[ -n $LATENCY_RATES ]]; then
	log "== message → assignment latency =="
	bench_latency
fi
if [[ -n $ROUTER_RATES ]]; then
	log "== one tenant's router under load =="
	bench_router
fi
if ((MEMORY_CONVERSATIONS > 0)); then
	log "== memory per agent and per open conversation =="
	bench_memory
fi
if ((SOAK_SECS > 0)); then
	log "== load-shedding soak =="
	bench_soak
fi
