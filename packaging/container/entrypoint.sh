#!/bin/sh
# Entry point of the noports image: run any of the programs by name
# (srvd, sshnpd, sshnp, npt, npa, srv, at_activate, noports); anything else is a
# `noports` subcommand. exec keeps the program as PID 1's child signal target.
set -eu
if [ "$#" -eq 0 ]; then
  exec noports --version
fi
case "$1" in
  srvd|sshnpd|sshnp|npt|npa|srv|at_activate|noports)
    exec "$@" ;;
  -*)
    exec noports "$@" ;;
  *)
    exec noports "$@" ;;
esac
