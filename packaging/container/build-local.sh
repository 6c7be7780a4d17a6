#!/bin/sh
# Build packaging/container/Dockerfile with no registry and no Docker daemon, then run it.
# Opt-in (not part of the test suite): needs root, Debian's debootstrap and buildah, a reachable
# Debian mirror and PyPI, about 1.5 GB under $WORK and 3-5 minutes the first time.
#
#   sudo apt-get install -y debootstrap buildah
#   sudo packaging/container/build-local.sh            # from the repository root
#
# 1. debootstrap a Debian bookworm rootfs with Python (cached in $WORK/rootfs);
# 2. import it as the local base image localhost/noports-base:bookworm (buildah, vfs storage);
# 3. build the Dockerfile with --build-arg PYTHON_IMAGE=<that base> -> localhost/noports:local;
# 4. run the image: the entry point (`noports --version`, `srvd --help`), then an embedded
#    atServer and srvd in it with the HEALTHCHECK command before, during and after srvd;
# 5. with EXPORT=path.tar, also write a docker-archive (`docker load -i path.tar` elsewhere).
#
# Process isolation is buildah's chroot (BUILDAH_ISOLATION=chroot): `podman run` (crun) fails
# in unprivileged sandboxes on setrlimit; see README.md next to this script for what was seen.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/var/tmp/noports-container}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=${BASE:-localhost/noports-base:$SUITE}
IMAGE=${IMAGE:-localhost/noports:local}
EXPORT=${EXPORT:-}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
B="buildah --storage-driver vfs"

say() { printf '== %s\n' "$*"; }
die() { printf 'build-local.sh: %s\n' "$*" >&2; exit "${2:-1}"; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and buildah's vfs storage need it)" 2
for tool in debootstrap buildah tar python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install -y debootstrap buildah)" 2
done
mkdir -p "$WORK"

# -- 1. the rootfs ---------------------------------------------------------------------------
if [ ! -f "$WORK/rootfs/.complete" ]; then
  say "debootstrap $SUITE from $MIRROR into $WORK/rootfs"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python3-dev,python-is-python3,ca-certificates \
    "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $WORK/debootstrap.log"
  rm -f "$WORK"/rootfs/var/cache/apt/archives/*.deb
  # Trust the host's extra CAs too (a TLS-inspecting proxy between this machine and PyPI):
  # only certificates the host trusts beyond Debian's own bundle are added.
  python3 - "$WORK/rootfs" <<'PY'
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
def certs(p):
    return pem.findall(Path(p).read_text()) if Path(p).exists() else []
mine = set(certs(root / "etc/ssl/certs/ca-certificates.crt"))
extra = [c for c in certs("/etc/ssl/certs/ca-certificates.crt") if c not in mine]
dest = root / "usr/local/share/ca-certificates"
dest.mkdir(parents=True, exist_ok=True)
for i, c in enumerate(extra):
    (dest / f"host-extra-{i}.crt").write_text(c + "\n")
print(f"== {len(extra)} extra CA certificate(s) from the host")
PY
  chroot "$WORK/rootfs" update-ca-certificates >/dev/null
  touch "$WORK/rootfs/.complete"
fi
say "rootfs: $(du -sh --exclude=proc "$WORK/rootfs" | cut -f1)"

# -- 2. the local base image -------------------------------------------------------------------
if ! $B inspect --type image "$BASE" >/dev/null 2>&1; then
  say "import $WORK/rootfs as $BASE"
  tar -C "$WORK/rootfs" --exclude=./.complete -cf "$WORK/base.tar" .
  ctr=$($B from scratch)
  $B add "$ctr" "$WORK/base.tar" / >/dev/null
  # Debian's Python is "externally managed" (PEP 668); the Dockerfile installs with plain pip,
  # as it does on the python image, so the base says it may.
  $B config --env PIP_BREAK_SYSTEM_PACKAGES=1 --env LANG=C.UTF-8 --cmd python3 "$ctr"
  $B commit --format docker "$ctr" "$BASE" >/dev/null
  $B rm "$ctr" >/dev/null
  rm -f "$WORK/base.tar"
fi

# -- 3. the image ------------------------------------------------------------------------------
say "build $IMAGE from packaging/container/Dockerfile (base $BASE)"
start=$(date +%s)
$B bud --format docker --network host \
  --ignorefile "$ROOT/packaging/container/Dockerfile.dockerignore" \
  --build-arg "PYTHON_IMAGE=$BASE" \
  -f "$ROOT/packaging/container/Dockerfile" -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 \
  || die "build failed; see $WORK/build.log"
say "built in $(( $(date +%s) - start )) s"
$B images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E "noports" || true

# -- 4. run it ---------------------------------------------------------------------------------
ctr=$($B from "$IMAGE")
trap '$B rm "$ctr" >/dev/null 2>&1 || true' EXIT
run() { $B run --network host "$@"; }
say "entry point, no arguments (CMD)"
run "$ctr" -- noports-entrypoint
say "entry point: srvd --help (first lines)"
run "$ctr" -- noports-entrypoint srvd --help | head -3
say "user"
run "$ctr" -- id
say "HEALTHCHECK against srvd on an embedded atServer, both inside the image"
run -v "$ROOT/packaging/container/health-demo.sh:/tmp/health-demo.sh:ro" "$ctr" -- \
  sh /tmp/health-demo.sh

# -- 4b. the same with podman, when it and runc are installed ------------------------------------
# crun 1.8 (Debian 12) refuses hybrid cgroup v1/v2 hosts, and without CAP_SYS_RESOURCE podman's
# default rlimits (raised above the caller's) fail: runc and lowered --ulimit values work.
if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
  P="podman --storage-driver vfs --runtime runc"
  LIMITS="--ulimit nofile=4096:4096 --ulimit nproc=4096:4096"
  name="noports-health-$$"
  say "podman run (runc, own network namespace): the image's CMD"
  # shellcheck disable=SC2086
  $P run --rm $LIMITS --network none "$IMAGE" 2>>"$WORK/podman.log"
  say "podman: srvd with the image's defaults, then the image's own HEALTHCHECK"
  # shellcheck disable=SC2086
  $P run -d --name "$name" $LIMITS --network none \
    -v "$ROOT/packaging/container/health-demo.sh:/tmp/health-demo.sh:ro" \
    --entrypoint sh "$IMAGE" /tmp/health-demo.sh serve >/dev/null 2>>"$WORK/podman.log"
  i=0
  until $P healthcheck run "$name" >/dev/null 2>>"$WORK/podman.log" || [ $i -ge 60 ]; do
    sleep 0.5; i=$((i + 1))
  done
  status=$($P inspect --format '{{.State.Health.Status}}' "$name" 2>>"$WORK/podman.log")
  say "health: $status"
  start=$(date +%s)
  $P stop "$name" >/dev/null 2>>"$WORK/podman.log"
  say "stopped in $(( $(date +%s) - start )) s, exit code" \
    "$($P inspect --format '{{.State.ExitCode}}' "$name" 2>>"$WORK/podman.log")"
  $P rm "$name" >/dev/null 2>>"$WORK/podman.log"
  [ "$status" = healthy ] || die "the image's HEALTHCHECK did not report healthy"
fi

# -- 5. export ---------------------------------------------------------------------------------
if [ -n "$EXPORT" ]; then
  $B push "$IMAGE" "docker-archive:$EXPORT:noports:local" >/dev/null
  say "exported $EXPORT ($(du -h "$EXPORT" | cut -f1))"
fi
say "done"
