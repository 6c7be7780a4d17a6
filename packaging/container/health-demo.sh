#!/bin/sh
# Used by build-local.sh: run INSIDE the built image (as uid 10001). An embedded atServer,
# srvd registered on it with fresh keys, and the image's HEALTHCHECK command (noports-healthcheck)
# before srvd starts (unhealthy), while it runs (healthy) and after it stops (unhealthy).
# srvd gets its metrics address from NOPORTS_SRVD_METRICS through the entry point.
#
# `health-demo.sh serve`: start the same pair with the image's own defaults (srvd's metrics on
# 0.0.0.0:9464, NOPORTS_HEALTH_URL as the image sets it) and keep running, for
# `podman healthcheck run` to run the image's HEALTHCHECK (needs a network namespace of its own).
set -eu
MODE=${1:-check}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
D=$(mktemp -d)
python3 -c 'import sys; from noports.crypto.atkeys import AtKeys; AtKeys.generate("@relay").save(sys.argv[1])' "$D/relay.atKeys"
noports server add --data-dir "$D/srv" @relay --keys-file "$D/relay.atKeys" >/dev/null
noports server --data-dir "$D/srv" --port 0 >"$D/server.log" 2>&1 &
SERVER=$!
i=0; until [ -s "$D/srv/server.json" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$D/srv/server.json")
CA=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca_file"])' "$D/srv/server.json")
if [ "$MODE" = serve ]; then
  exec noports-entrypoint srvd -a @relay -i 127.0.0.1 -k "$D/relay.atKeys" \
    --root-server "127.0.0.1:$PORT" --ca-file "$CA"
fi
MPORT=$(free_port)
export NOPORTS_SRVD_METRICS="127.0.0.1:$MPORT" NOPORTS_HEALTH_URL="http://127.0.0.1:$MPORT/healthz"
if noports-healthcheck; then echo "healthy before srvd started" >&2; exit 1; fi
echo "before srvd: healthcheck rc=1"
noports-entrypoint srvd -a @relay -i 127.0.0.1 -k "$D/relay.atKeys" --root-server "127.0.0.1:$PORT" --ca-file "$CA" 2>"$D/srvd.log" &
SRVD=$!
i=0; until noports-healthcheck >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
noports-healthcheck; echo "healthcheck rc=$?"
python3 -c 'import sys,urllib.request; t=urllib.request.urlopen(sys.argv[1]).read().decode(); print([l for l in t.splitlines() if l.startswith("noports_build_info")][0])' "http://127.0.0.1:$MPORT/metrics"
kill "$SRVD"; wait "$SRVD" || true
if noports-healthcheck; then echo "still healthy after srvd stopped" >&2; exit 1; fi
echo "after srvd stopped: healthcheck rc=1"
kill "$SERVER"; wait "$SERVER" || true
rm -rf "$D"
