"""srvd, the relay daemon: a control process talking atProtocol plus N data worker processes.

* :mod:`.daemon` -- the control process (:class:`Srvd`, :class:`Settings`): one monitor for
  ``sshrvd`` notifications, request decisions, public keys, replies and nacks, drain on stop.
* :mod:`.requests` -- the decisions without I/O (classification, manager, sender==atSignA,
  duplicates, caps and quotas).
* :mod:`.pool` / :mod:`.worker` / :mod:`.ipc` -- data workers, each with its own event loop
  and :class:`noports.relay.Relay`; sessions are placed on the least-loaded worker.
* :mod:`.snoop` -- the official ``--snoop`` byte log (debugging only; privacy cost).
"""

from .daemon import Settings, Srvd

__all__ = ["Settings", "Srvd"]
