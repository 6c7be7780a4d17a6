"""Embedded control plane: root directory plus a multi-atSign atServer in one asyncio process.

Layering (STYLE.md 10): ``parse`` turns lines into commands (no I/O), ``keys`` models atKeys and
metadata, ``store`` persists everything in SQLite (WAL), ``engine``/``verbs_*`` run commands
for one session and return outputs (no I/O), ``hub`` fans notifications out to live monitors
through a small sink interface, and ``net`` is the thin asyncio/TLS adapter. The server never
imports the client side of ``noports.at``: the protocol spec is the contract between them.
"""
