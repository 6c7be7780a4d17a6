"""The srvd relay engine: sessions, port pairs, socket auth, FIFO pairing and byte pumps.

The relay never decrypts: it checks each socket's signed auth line (spec 4.4), pairs
authenticated sockets per side in order, and bridges bytes with the splice pump (Linux)
or the pure copy pump. Public API::

    relay = Relay(bind_host="127.0.0.1", port_range=None, limits=RelayLimits(), impl=None)
    await relay.start()
    sess = await relay.create_session(SessionSpec(session_id, atsign_a, atsign_b, client_nonce,
                                                  public_key_a=..., public_key_b=...))
    sess.host, sess.port_a, sess.port_b, sess.rvd_nonce
    stats = await sess.wait_closed()
    await relay.close()
"""

from .auth import AuthLine, Outcome, Verdict
from .limits import PreAuthGate, RelayLimits, raise_nofile_limit
from .relay import Relay, new_rvd_nonce, select_pump
from .session import Session, SessionSpec, SessionStats

__all__ = [
    "AuthLine",
    "Outcome",
    "PreAuthGate",
    "Relay",
    "RelayLimits",
    "Session",
    "SessionSpec",
    "SessionStats",
    "Verdict",
    "new_rvd_nonce",
    "raise_nofile_limit",
    "select_pump",
]
