#!/bin/sh
# Entry point of the noports image: run any of the programs by name
# (srvd, sshnpd, sshnp, npt, npa, srv, at_activate, noports); anything else is a
# `noports` subcommand. exec keeps the program as PID 1's child signal target.
#
# srvd gets `--metrics $NOPORTS_SRVD_METRICS` (the image sets 0.0.0.0:9464) unless the
# command line has its own --metrics, so the HEALTHCHECK's /healthz answers by default.
# Set NOPORTS_SRVD_METRICS to an empty value to run srvd without the endpoint.
set -eu
if [ "$#" -eq 0 ]; then
  exec noports --version
fi
case "$1" in
  srvd)
    if [ -n "${NOPORTS_SRVD_METRICS:-}" ]; then
      for arg in "$@"; do
        case "$arg" in
          --metrics|--metrics=*) exec "$@" ;;
        esac
      done
      shift
      exec srvd --metrics "$NOPORTS_SRVD_METRICS" "$@"
    fi
    exec "$@" ;;
  sshnpd|sshnp|npt|npa|srv|at_activate|noports)
    exec "$@" ;;
  -*)
    exec noports "$@" ;;
  *)
    exec noports "$@" ;;
esac
