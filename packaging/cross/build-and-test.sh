#!/bin/bash
# Build and smoke-test a compiled noports wheel for another architecture on an x86_64 Debian host
# without Docker: a Debian chroot (debootstrap) run under qemu-user through binfmt_misc.
#
#   sudo packaging/cross/build-and-test.sh aarch64|riscv64
#
# Steps: host builds the sdist from this tree; the chroot (cached in $NOPORTS_CROSS_CACHE/<arch>,
# default /var/tmp/noports-cross) builds a wheel from it with the distribution's compiler, installs
# it into a venv that sees Debian's python3-cryptography (--system-site-packages), then runs
# `noports --version` (must say compiled), `noports demo` (checksum) and a fast test subset against
# the INSTALLED package from a directory outside the source tree. Not part of the default test run.
#
# Network: the Debian mirror (debootstrap/apt) and PyPI (pip, for dependencies Debian lacks).
# Env: NOPORTS_CROSS_CACHE, NOPORTS_CROSS_MIRROR (default: first URI in /etc/apt/sources.list*),
#      NOPORTS_CROSS_DEMO_SIZE (default 8M), NOPORTS_CROSS_TESTS (space-separated test files).
set -euo pipefail

ARCH=${1:-}
case "$ARCH" in
aarch64) DEBARCH=arm64 SUITE=bookworm QEMU=qemu-aarch64 ;;
riscv64) DEBARCH=riscv64 SUITE=trixie QEMU=qemu-riscv64 ;;
*)
	echo "usage: $0 aarch64|riscv64" >&2
	exit 2
	;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${NOPORTS_CROSS_CACHE:-/var/tmp/noports-cross}
CHROOT=$CACHE/$ARCH
DEMO_SIZE=${NOPORTS_CROSS_DEMO_SIZE:-8M}
TESTS=${NOPORTS_CROSS_TESTS:-tests/test_records.py tests/test_stream_ctr.py tests/test_tunnel_library.py}
PKGS=python3,python3-venv,python3-dev,python3-pip,python3-setuptools,python3-wheel,python3-cryptography,python3-pytest,gcc,libc6-dev,ca-certificates

log() { printf '[cross %s %s] %s\n' "$ARCH" "$(date -u +%H:%M:%S)" "$*"; }
die() {
	log "FAIL: $*"
	exit 1
}
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts)"

if [ -z "${NOPORTS_CROSS_MIRROR:-}" ]; then
	NOPORTS_CROSS_MIRROR=$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
		2>/dev/null | head -1 | awk '{print $2}' || true)
fi
MIRROR=${NOPORTS_CROSS_MIRROR:-http://deb.debian.org/debian}

# 1. host tools
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v "$QEMU-static" >/dev/null || command -v "$QEMU" >/dev/null || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
dpkg -s debian-archive-keyring >/dev/null 2>&1 || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
	log "installing host packages: ${need[*]}"
	timeout 900 apt-get update -qq
	DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. binfmt: the interpreter must be registered (with the F flag, so it works inside the chroot)
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
if [ ! -e "/proc/sys/fs/binfmt_misc/$QEMU" ]; then
	log "registering $QEMU with binfmt_misc"
	update-binfmts --enable "$QEMU" >/dev/null 2>&1 || true
	if [ ! -e "/proc/sys/fs/binfmt_misc/$QEMU" ] && command -v systemctl >/dev/null; then
		systemctl restart systemd-binfmt >/dev/null 2>&1 || true
	fi
	if [ ! -e "/proc/sys/fs/binfmt_misc/$QEMU" ] && [ -e "/usr/lib/binfmt.d/$QEMU.conf" ]; then
		# binfmt.d line ":name:type:offset:magic:mask:interpreter:flags" goes to register as is
		grep -v '^#' "/usr/lib/binfmt.d/$QEMU.conf" >/proc/sys/fs/binfmt_misc/register || true
	fi
fi
[ -e "/proc/sys/fs/binfmt_misc/$QEMU" ] || die "binfmt_misc has no $QEMU entry (update-binfmts --display)"
grep -q '^enabled' "/proc/sys/fs/binfmt_misc/$QEMU" || die "binfmt $QEMU disabled"

# 3. chroot (cached; .noports-bootstrapped after debootstrap, .noports-ready once PKGS are in).
# debootstrap --include does not resolve virtual packages (python3-cryptography needs
# python3-cffi-backend-api-*, which python3-cffi-backend provides) and then stops at configure:
# the packages are completed with apt inside the chroot, which also repairs a half-configured one.
PKGS=$PKGS,python3-cffi-backend,python3-yaml
mkdir -p "$CACHE"
if [ ! -e "$CHROOT/.noports-ready" ] && [ ! -e "$CHROOT/.noports-bootstrapped" ]; then
	rm -rf "$CHROOT"
	log "debootstrap $SUITE/$DEBARCH from $MIRROR into $CHROOT"
	t0=$(date +%s)
	kr=/usr/share/keyrings/debian-archive-keyring.gpg
	if ! timeout 5400 debootstrap --arch "$DEBARCH" --variant=minbase --include="$PKGS" \
		--keyring="$kr" "$SUITE" "$CHROOT" "$MIRROR" >"$CACHE/$ARCH-debootstrap.log" 2>&1; then
		tail -n 5 "$CACHE/$ARCH-debootstrap.log"
		[ -x "$CHROOT/usr/bin/apt-get" ] || die "debootstrap failed (log: $CACHE/$ARCH-debootstrap.log)"
		log "debootstrap stopped at configure; apt completes it"
	fi
	touch "$CHROOT/.noports-bootstrapped"
	log "debootstrap done in $(($(date +%s) - t0)) s"
fi

cleanup() {
	for m in dev/pts dev proc sys; do umount -l "$CHROOT/$m" 2>/dev/null || true; done
}
trap cleanup EXIT
mount -t proc proc "$CHROOT/proc"
mount -t sysfs sys "$CHROOT/sys"
mount --bind /dev "$CHROOT/dev"
mount --bind /dev/pts "$CHROOT/dev/pts"
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
# pip in the chroot trusts what the host trusts (a site CA or TLS proxy lives in the host bundle)
HOST_CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$HOST_CA" ] && cp "$HOST_CA" "$CHROOT/etc/noports-host-ca.pem"
in_chroot() {
	chroot "$CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
		${HOST_CA:+PIP_CERT=/etc/noports-host-ca.pem} "$@"
}

if [ ! -e "$CHROOT/.noports-ready" ]; then
	t0=$(date +%s)
	echo "deb $MIRROR $SUITE main" >"$CHROOT/etc/apt/sources.list"
	log "apt in the chroot: ${PKGS//,/ }"
	in_chroot timeout 900 apt-get update -qq >"$CACHE/$ARCH-apt.log" 2>&1 || die "apt-get update failed"
	in_chroot env DEBIAN_FRONTEND=noninteractive timeout 3600 apt-get install -y -q -f \
		--no-install-recommends >>"$CACHE/$ARCH-apt.log" 2>&1 &&
		in_chroot env DEBIAN_FRONTEND=noninteractive timeout 3600 apt-get install -y -q \
			--no-install-recommends ${PKGS//,/ } >>"$CACHE/$ARCH-apt.log" 2>&1 || {
		tail -n 20 "$CACHE/$ARCH-apt.log"
		die "apt-get install in the chroot failed"
	}
	touch "$CHROOT/.noports-ready"
	log "chroot ready in $(($(date +%s) - t0)) s"
fi

# 4. sdist on the host (the shipped .c must be enough: the chroot has no Cython)
PYBUILD=${NOPORTS_CROSS_HOST_PYTHON:-python3}
WORK=$CHROOT/work
rm -rf "$WORK"
mkdir -p "$WORK/dist" "$WORK/run"
log "building the sdist on the host"
sdist=$(cd "$ROOT" && timeout 600 "$PYBUILD" -c \
	"import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))" \
	"$WORK/dist" | tail -1)
[ -f "$WORK/dist/$sdist" ] || die "sdist not built"
# the tests run from /work/run against the installed package: copy only the test files
cp -r "$ROOT/tests" "$WORK/run/tests"
find "$WORK/run/tests" -name __pycache__ -prune -exec rm -rf {} +

# 5. wheel + venv + install inside the chroot
log "building the $ARCH wheel from $sdist"
t0=$(date +%s)
# Debian's setuptools when it reads the SPDX `license` expression (>= 77: trixie), else pip's
# build isolation fetches the build requirements from PyPI (bookworm ships 66).
isolation=--no-build-isolation
in_chroot python3 -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' ||
	isolation=
log "pip wheel ${isolation:-(build isolation: setuptools from PyPI)}"
in_chroot timeout 3600 python3 -m pip wheel --no-deps $isolation -w /work/wheel \
	"/work/dist/$sdist" >"$CACHE/$ARCH-build.log" 2>&1 || {
	tail -30 "$CACHE/$ARCH-build.log"
	die "wheel build failed"
}
BUILD_S=$(($(date +%s) - t0))
wheel=$(cd "$WORK/wheel" && ls noports-*.whl | head -1)
log "wheel $wheel built in $BUILD_S s"
in_chroot python3 -m venv --system-site-packages /work/venv
t0=$(date +%s)
in_chroot timeout 1800 /work/venv/bin/pip install -q "/work/wheel/$wheel" >"$CACHE/$ARCH-install.log" 2>&1 || {
	tail -30 "$CACHE/$ARCH-install.log"
	die "wheel install failed"
}
INSTALL_S=$(($(date +%s) - t0))
log "installed in $INSTALL_S s"

# 6. smoke
cd_run() { in_chroot /bin/sh -c "cd /work/run && $*"; }
version=$(cd_run timeout 300 /work/venv/bin/noports --version 2>&1) || die "--version: $version"
echo "$version"
echo "$version" | grep -q 'compiled' || die "--version does not say compiled"
crypto=$(in_chroot /work/venv/bin/python -c \
	'import cryptography, os; print(cryptography.__version__, os.path.dirname(cryptography.__file__))')
log "cryptography in use: $crypto"

log "noports demo --size $DEMO_SIZE"
t0=$(date +%s)
demo=$(cd_run timeout 900 /work/venv/bin/noports demo --size "$DEMO_SIZE" --pings 200 2>&1) || {
	echo "$demo"
	die "demo failed"
}
DEMO_S=$(($(date +%s) - t0))
echo "$demo"

log "tests: $TESTS"
t0=$(date +%s)
set +e
tests_out=$(cd_run timeout 1800 /work/venv/bin/python -m pytest -q -p no:cacheprovider $TESTS 2>&1)
rc=$?
set -e
TEST_S=$(($(date +%s) - t0))
echo "$tests_out" | tail -15
# the tests must have imported the installed package, not a source tree
where=$(cd_run /work/venv/bin/python -c "'import noports; print(noports.__file__)'")
echo "$where" | grep -q '^/work/venv/' || die "noports imported from $where, not the venv"

echo
echo "== noports cross $ARCH ($SUITE/$DEBARCH under $QEMU) =="
echo "wheel:       $wheel"
echo "build:       ${BUILD_S} s (pip wheel from sdist), install ${INSTALL_S} s"
echo "version:     $(echo "$version" | head -3 | tr '\n' ' ')"
echo "crypto:      $crypto"
echo "demo:        ${DEMO_S} s; $(echo "$demo" | grep -iE 'MB/s|MiB/s|throughput|checksum' | tr '\n' ' ')"
echo "tests:       rc=$rc in ${TEST_S} s: $(echo "$tests_out" | tail -1)"
[ "$rc" = 0 ] || die "test subset failed"
log "OK"
