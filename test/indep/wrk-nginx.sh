#!/usr/bin/env bash
# Independent cross-check of `meshcap bench` with common tools: nginx as the server app and wrk as the load
# generator, in netns pods, each mode set up with the meshcap CLI exactly as a user would. Not run by CI.
#
#   sudo test/indep/wrk-nginx.sh [ROUNDS] [SECONDS]      (needs: apt-get install wrk nginx-light)
#
# Scenarios (a fresh client/server pod pair each, removed afterwards):
#   direct         no capture, no nat table
#   iptables       client: meshcap iptables -i '*' + meshcap proxy
#   ebpf           client: meshcap ebpf attach -i '*' + meshcap proxy
#   ebpf-fastpath  as ebpf, with --fast-path (sk_msg redirect on the app<->sidecar hop)
#   iptables-full  as iptables, plus the server pod: meshcap iptables -b '*' + meshcap proxy
#   ebpf-full      as ebpf, plus the server pod: meshcap ebpf attach -b '*' + meshcap proxy
# Metrics: keep-alive request rate (wrk -c16, 1 KiB body) and new-connection rate (Connection: close, -c16).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
MESHCAP=${MESHCAP:-$(cd "$(dirname "$0")/../.." && pwd)/bin/meshcap}
CG2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
WORK=$(mktemp -d /tmp/meshcap-indep.XXXXXX)
chmod 755 "$WORK"
read -r -a SCENARIOS <<<"${SCENARIOS:-direct iptables ebpf ebpf-fastpath iptables-full ebpf-full}"
PIDS=()

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for t in wrk nginx "$MESHCAP"; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
[ -n "$CG2" ] || { echo "no cgroup2 mount" >&2; exit 1; }

# inpod POD CMD...: run CMD inside the pod's cgroup (joined before anything else) and netns.
inpod() {
	local pod=$1; shift
	bash -c 'cg=$1 ns=$2; shift 2; echo $$ >"$cg/cgroup.procs" && exec nsenter --net="/var/run/netns/$ns" -- "$@"' \
		_ "$CG2/meshcap.slice/$pod" "$pod" "$@"
}
# inpod_bg POD CMD...: the same, in the background; its pid is remembered for teardown.
inpod_bg() { inpod "$@" >"$WORK/$1.$(basename "$2").log" 2>&1 & PIDS+=($!); }

pods_up() {
	mkdir -p "$CG2/meshcap.slice"
	for p in "$C" "$S"; do ip netns add "$p"; ip -n "$p" link set lo up; mkdir "$CG2/meshcap.slice/$p"; done
	ip link add "v$C" netns "$C" type veth peer name "v$S" netns "$S"
	ip -n "$C" addr add 198.18.0.1/24 dev "v$C"; ip -n "$C" link set "v$C" up
	ip -n "$S" addr add 198.18.0.2/24 dev "v$S"; ip -n "$S" link set "v$S" up
	for p in "$C" "$S"; do ip netns exec "$p" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=1; done
}

pods_down() {
	if [ -n "${C:-}" ]; then
		for p in "$C" "$S"; do
			"$MESHCAP" ebpf detach --pin-dir "$WORK/pins-mnt/meshcap" --cgroup "$CG2/meshcap.slice/$p" --netns "/var/run/netns/$p" >/dev/null 2>&1 || true
			echo 1 >"$CG2/meshcap.slice/$p/cgroup.kill" 2>/dev/null || true
		done
	fi
	for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
	PIDS=()
	[ -n "${C:-}" ] || return 0
	for p in "$C" "$S"; do
		rmdir "$CG2/meshcap.slice/$p" 2>/dev/null || true
		ip netns del "$p" 2>/dev/null || true
	done
	C= S=
}
cleanup() { pods_down; umount "$WORK/pins-mnt" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

# A private bpffs for this script's pins.
mkdir -p "$WORK/pins-mnt" && mount -t bpf bpf "$WORK/pins-mnt"

cat >"$WORK/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $WORK/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 8080 reuseport backlog=4096; location / { root $WORK/www; } } }
CONF
mkdir -p "$WORK/www" && head -c 1024 /dev/zero | tr '\0' x >"$WORK/www/1k"

# run CMD...: run a set-up step; on failure show its output and stop.
run() { local out; if ! out=$("$@" 2>&1); then echo "failed: $*" >&2; echo "$out" >&2; exit 1; fi; }

cat >"$WORK/haproxy.cfg" <<CONF
global
    maxconn 8000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend captured
    bind 0.0.0.0:15001
    default_backend original_dst
backend original_dst
    server orig 0.0.0.0
CONF

# sidecar POD: the pod's sidecar (SIDECAR=meshcap, the default, or SIDECAR=haproxy: Debian's haproxy reading
# SO_ORIGINAL_DST, as uid/gid 1337), outbound 15001 only for haproxy.
sidecar() {
	case ${SIDECAR:-meshcap} in
	meshcap) inpod_bg "$1" "$MESHCAP" proxy --pin-dir "$WORK/pins-mnt/meshcap" ;;
	haproxy) inpod_bg "$1" setpriv --reuid 1337 --regid 1337 --clear-groups haproxy -db -f "$WORK/haproxy.cfg" ;;
	*) echo "unknown SIDECAR=${SIDECAR}" >&2; exit 1 ;;
	esac
}
proxy() { sidecar "$1"; for _ in $(seq 100); do ip netns exec "$1" ss -Hltn 'sport = :15001' | grep -q . && return; sleep 0.05; done; echo "proxy in $1 did not start" >&2; exit 1; }

setup() {
	local sc=$1
	C=mci$RANDOM-c S=mci$RANDOM-s
	pods_up
	inpod_bg "$S" nginx -c "$WORK/nginx.conf"
	case $sc in
	iptables|iptables-full)
		run inpod "$C" "$MESHCAP" iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*'
		proxy "$C" ;;&
	iptables-full)
		run inpod "$S" "$MESHCAP" iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b '*'
		proxy "$S" ;;
	ebpf-fastpath)
		run "$MESHCAP" ebpf attach --pin-dir "$WORK/pins-mnt/meshcap" --cgroup "$CG2/meshcap.slice/$C" --netns "/var/run/netns/$C" -i '*' --fast-path
		proxy "$C" ;;
	ebpf|ebpf-full)
		run "$MESHCAP" ebpf attach --pin-dir "$WORK/pins-mnt/meshcap" --cgroup "$CG2/meshcap.slice/$C" --netns "/var/run/netns/$C" -i '*'
		proxy "$C" ;;&
	ebpf-full)
		run "$MESHCAP" ebpf attach --pin-dir "$WORK/pins-mnt/meshcap" --cgroup "$CG2/meshcap.slice/$S" --netns "/var/run/netns/$S" -i '*' -b '*'
		proxy "$S" ;;
	esac
	for _ in $(seq 100); do ip netns exec "$S" ss -Hltn 'sport = :8080' | grep -q . && return; sleep 0.05; done
}

# rate MODE: wrk's Requests/sec from inside the client pod.
rate() {
	local extra=()
	[ "$1" = connect ] && extra=(-H "Connection: close")
	inpod "$C" wrk -t1 -c16 -d"${SECS}s" "${extra[@]}" http://198.18.0.2:8080/1k 2>&1 | awk '/Requests\/sec/ {print $2}'
}

declare -A RES
for ((r = 0; r < ROUNDS; r++)); do
	for ((i = 0; i < ${#SCENARIOS[@]}; i++)); do
		sc=${SCENARIOS[$(((i + r) % ${#SCENARIOS[@]}))]}
		setup "$sc"
		rr=$(rate rr); cn=$(rate connect)
		ct=$(ip netns exec "$C" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0)
		pods_down
		RES[$sc,rr]+="$rr "; RES[$sc,connect]+="$cn "
		printf 'round %d %-14s rr %10s req/s   connect %10s conn/s   client conntrack %s\n' "$r" "$sc" "$rr" "$cn" "$ct"
	done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
printf '%-14s %12s %12s\n' scenario rr_median connect_median
for sc in "${SCENARIOS[@]}"; do
	printf '%-14s %12s %12s\n' "$sc" "$(echo "${RES[$sc,rr]}" | median)" "$(echo "${RES[$sc,connect]}" | median)"
done
for pair in ebpf/iptables ebpf-fastpath/iptables ebpf-full/iptables-full; do
	a=${pair%/*} b=${pair#*/}
	for m in rr connect; do
		printf '%-24s %-8s %s\n' "$pair" "$m" "$(awk -v x="$(echo "${RES[$a,$m]}" | median)" -v y="$(echo "${RES[$b,$m]}" | median)" 'BEGIN {printf "%.2fx", x / y}')"
	done
done
