#!/usr/bin/env bash
# Smoke test of an INSTALLED noports wheel (cibuildwheel test-command; also usable by hand in
# any venv where the wheel is installed). Runs from a directory that holds no noports source,
# so an import from the source tree would show up as a failure, not as a pass.
#   NOPORTS_REQUIRE_EXTENSIONS=1  the install must be compiled (default for cibuildwheel)
#   WHEEL_TEST_PYTEST=0           skip the fast pytest subset (needs tests/ next to this script)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir noports && echo 'raise SystemExit("imported the decoy noports/ from the current directory")' \
  > noports/__init__.py

where=$(python -P -c 'import noports, os; print(os.path.dirname(noports.__file__))' 2>/dev/null \
  || python -c 'import sys; sys.path.pop(0); import noports, os; print(os.path.dirname(noports.__file__))')
echo "noports imported from $where"
version=$(noports --version)
echo "$version"
case "$version" in
  *"implementation compiled;"*) ;;
  *) if [ -n "${NOPORTS_REQUIRE_EXTENSIONS:-}" ]; then
       echo "wheel-test: NOPORTS_REQUIRE_EXTENSIONS is set but the install is not compiled" >&2
       exit 1
     fi ;;
esac
noports demo --size 8M --pings 50
srvd --version >/dev/null && npt --version >/dev/null && sshnpd --version >/dev/null

# The fast subset: a copy of tests/ and pyproject.toml (cibuildwheel test-sources).
if [ "${WHEEL_TEST_PYTEST:-1}" != 0 ] && [ -d "$here/../tests" ]; then
  cp -r "$here/../tests" "$work/tests"
  cp "$here/../pyproject.toml" "$work/"   # pytest settings; test_build reads the entry points
  rm -rf "$work/noports"   # pytest puts $work on sys.path; nothing there may shadow the wheel
  python -m pytest -q -p no:cacheprovider "$work/tests" -m 'not slow and not interop' \
    -k 'build or records or stream_ctr or tunnel_demo or crypto_fallback or names'
fi
echo "wheel-test: OK"
