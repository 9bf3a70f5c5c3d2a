#!/usr/bin/env bash
# Start a local Ray head for freshrank: dashboard and job API on 127.0.0.1, metrics export on,
# token authentication on. Then submit jobs and deploy Serve configs to it (docs/operating.md):
#
#   cluster/local/start.sh
#   export RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265
#   ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/train.py ...
#   serve deploy serve_apps/ranking.yaml
#   cluster/local/stop.sh
#
# Settings (environment variables; Ray's defaults where none is given):
#   FRESHRANK_RAY_PORT            [6379]  GCS port (the cluster address)
#   FRESHRANK_DASHBOARD_PORT      [8265]  dashboard and job API
#   FRESHRANK_METRICS_PORT        [8080]  Prometheus endpoint of the node's metrics agent
#   FRESHRANK_CLIENT_PORT         [10001] Ray Client server
#   FRESHRANK_NUM_CPUS            [8]     logical CPUs (more than the cores: Train workers, Serve
#                                         replicas and Data tasks all need a slot)
#   FRESHRANK_RAY_TEMP_DIR        [/tmp/ray] sessions and logs of this head
#   FRESHRANK_METRICS_INTERVAL_MS [5000]  how often Ray processes export metrics
#   FRESHRANK_NODE_IP             [127.0.0.1] 127.0.0.1 keeps every port on loopback (Ray's
#                                         single-node mode). A private IP instead lets other
#                                         machines join (`ray start --address <ip>:<port>` with
#                                         the same token): GCS and raylet then listen on that
#                                         IP and the metrics port on every interface -- firewall
#                                         them; the dashboard stays on 127.0.0.1 (SSH tunnel).
#   FRESHRANK_SERVE_INGRESS      [proxy] how HTTP requests reach Serve replicas: `proxy` (Serve's
#                                         Python proxy) or `haproxy` (Ray 2.60's high-throughput
#                                         mode: HAProxy forwards straight to the replicas; its
#                                         stats and Prometheus listeners are kept on 127.0.0.1 by
#                                         platform/freshrank/serving/haproxy_loopback.py). Read by
#                                         every Ray process when it starts: choose it here, not
#                                         per deploy (docs/operating.md, "HAProxy ingress").
#   FRESHRANK_HAPROXY_STATS_PORT [8404], FRESHRANK_HAPROXY_METRICS_PORT [9101],
#   FRESHRANK_FALLBACK_PROXY_PORT [8500]: HAProxy's stats page, its Prometheus endpoint and the
#                                         head's fallback Serve proxy (haproxy mode only).
#   FRESHRANK_AGENT_PORT, FRESHRANK_AGENT_GRPC_PORT, FRESHRANK_RUNTIME_ENV_AGENT_PORT,
#   FRESHRANK_NODE_MANAGER_PORT, FRESHRANK_OBJECT_MANAGER_PORT, FRESHRANK_MIN_WORKER_PORT,
#   FRESHRANK_MAX_WORKER_PORT: the other ports, for running several heads on one machine.
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH: the token (default: ~/.ray/auth_token, made if missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${FRESHRANK_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/ray" ]; then
    echo "no $VENV/bin/ray: run 'make venv' first (or set FRESHRANK_VENV)" >&2
    exit 1
fi
# Jobs run `python ...` with the PATH of the Ray that runs them: make it this venv's python.
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"

PORT=${FRESHRANK_RAY_PORT:-6379}
DASHBOARD_PORT=${FRESHRANK_DASHBOARD_PORT:-8265}
METRICS_PORT=${FRESHRANK_METRICS_PORT:-8080}
CLIENT_PORT=${FRESHRANK_CLIENT_PORT:-10001}
NUM_CPUS=${FRESHRANK_NUM_CPUS:-8}
TEMP_DIR=${FRESHRANK_RAY_TEMP_DIR:-/tmp/ray}
NODE_IP=${FRESHRANK_NODE_IP:-127.0.0.1}
PGID_FILE="$TEMP_DIR/freshrank-head.pgid"

if [ -f "$PGID_FILE" ] && pgrep -g "$(cat "$PGID_FILE")" >/dev/null 2>&1; then
    echo "a freshrank head is already running under $TEMP_DIR; cluster/local/stop.sh stops it" >&2
    exit 1
fi

if [ "$NODE_IP" = "127.0.0.1" ]; then
    # Single-node mode: the node IP is 127.0.0.1, so GCS, raylet, agents and the metrics port
    # listen on loopback (otherwise Linux takes the default-route address and the metrics port
    # binds 0.0.0.0 whatever --dashboard-host says; see freshrank/ops/runtime.py).
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
fi
export RAY_metrics_report_interval_ms=${FRESHRANK_METRICS_INTERVAL_MS:-5000}
export RAY_DATA_USE_DATASOURCE_V2=0

# Serve's ingress: Ray reads it from the environment of the processes this head starts. The
# variables come from freshrank.ops.runtime.serve_ingress_env, the function init_ray uses.
SERVE_INGRESS=${FRESHRANK_SERVE_INGRESS:-proxy}
# shellcheck disable=SC2016
ingress_env=$("$VENV/bin/python" -c '
import shlex, sys
from freshrank.ops.runtime import serve_ingress_env
mode, *ports = sys.argv[1:]
env = serve_ingress_env(mode, *(int(p) if p else None for p in ports))
print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
' "$SERVE_INGRESS" "${FRESHRANK_HAPROXY_STATS_PORT:-}" "${FRESHRANK_HAPROXY_METRICS_PORT:-}" \
    "${FRESHRANK_FALLBACK_PROXY_PORT:-}")
eval "$ingress_env"

# Token authentication, explicitly (Ray 2.60 only turns it on by itself for ray.init(), or for
# `ray start` when a token already exists). Every process of this head inherits the mode.
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    # The token file owner-only: Ray writes it with the umask (-rw-r--r-- under 022), and whoever
    # reads it can submit jobs. freshrank.ops.runtime.secure_auth_token makes it 0600 (creating
    # it when missing, never world-readable for a moment) and tightens an existing one.
    "$VENV/bin/python" -c 'from freshrank.ops.runtime import secure_auth_token; secure_auth_token()'
fi

args=(
    --head
    --node-ip-address "$NODE_IP"
    --port "$PORT"
    --dashboard-host 127.0.0.1
    --dashboard-port "$DASHBOARD_PORT"
    --metrics-export-port "$METRICS_PORT"
    --ray-client-server-port "$CLIENT_PORT"
    --num-cpus "$NUM_CPUS"
    --temp-dir "$TEMP_DIR"
    --disable-usage-stats
)
opt() { if [ -n "${2:-}" ]; then args+=("$1" "$2"); fi; }
opt --dashboard-agent-listen-port "${FRESHRANK_AGENT_PORT:-}"
opt --dashboard-agent-grpc-port "${FRESHRANK_AGENT_GRPC_PORT:-}"
opt --runtime-env-agent-port "${FRESHRANK_RUNTIME_ENV_AGENT_PORT:-}"
opt --node-manager-port "${FRESHRANK_NODE_MANAGER_PORT:-}"
opt --object-manager-port "${FRESHRANK_OBJECT_MANAGER_PORT:-}"
opt --min-worker-port "${FRESHRANK_MIN_WORKER_PORT:-}"
opt --max-worker-port "${FRESHRANK_MAX_WORKER_PORT:-}"

# Ray's Serve controller puts the dashboard's current directory on replicas' sys.path: starting
# from the repository root is what lets `serve deploy` import serve_apps.ranking.
cd "$ROOT"
mkdir -p "$TEMP_DIR"
if command -v setsid >/dev/null 2>&1; then
    # A process group of its own, so stop.sh stops this head and nothing else on the machine.
    # shellcheck disable=SC2016
    setsid --wait bash -c 'echo $$ >"$1"; shift; exec ray start "$@"' _ "$PGID_FILE" "${args[@]}"
else
    ray start "${args[@]}"
    echo "note: no setsid here; stop this head with 'ray stop' (it stops every Ray of this user)" >&2
fi

cat <<EOF

freshrank head is up (node IP $NODE_IP; dashboard and job API on 127.0.0.1 only):
  dashboard + job API   http://127.0.0.1:$DASHBOARD_PORT   (token authentication on)
  metrics (Prometheus)  http://$NODE_IP:$METRICS_PORT/metrics
  cluster address       $NODE_IP:$PORT
  Serve ingress         $SERVE_INGRESS
Clients (ray job, serve, ray status) must say they use a token; they read it from
${RAY_AUTH_TOKEN_PATH:-~/.ray/auth_token} (or \$RAY_AUTH_TOKEN):
  export RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT \\
         RAY_DASHBOARD_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
The dashboard asks for the token once per browser: \`ray get-auth-token\` prints it.
Stop it with: cluster/local/stop.sh
EOF
