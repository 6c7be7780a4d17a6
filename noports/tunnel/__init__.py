"""Tunnel endpoints: the in-process core both ends of a NoPorts tunnel use.

Applications (sshnp, npt, sshnpd) call this library directly instead of spawning ``srv``
(DESIGN decision 3), so keys never pass through argv or the environment. The ``srv``
program (``noports.cli.srv``) is a thin front end over the same calls.

Cipher settings (``crypto=``)::

    None                                  clear text
    CtrKeys(key, iv)                      legacy AES-256-CTR, same key+IV both ways
    CtrKeys(kC2D, ivC2D, kD2C, ivD2C)     twin keys, one key+IV per direction
    AeadKeys(secret32, session_id)        strong mode: AEAD records (noports.crypto.records)

Single mode (spec 5.2)::

    client = await open_client_single(relay_host, relay_port, *, auth_line=None, crypto=None,
                                      local_host="127.0.0.1", local_port=0, timeout=60.0,
                                      relay_timeout=10.0, impl=None) -> SingleClient
    client.host, client.port              # bound before the call returns
    stats = await client.wait()           # BridgeStats(up, down) once the tunnel ended
    await client.close()

    stats = await run_daemon_single(relay_host, relay_port, *, auth_line=None, crypto=None,
                                    local_host="localhost", local_port=22, timeout=10.0,
                                    impl=None, on_ready=None) -> BridgeStats

Multi mode (spec 5.3; control channel + one relay socket per local connection)::

    cm = await ClientMulti.open(relay_host, relay_port, *, auth_line=None, crypto=None,
                                local_host="127.0.0.1", local_port=0, timeout=60.0,
                                heartbeat=None, relay_timeout=10.0, impl=None)
    cm.port; stats = await cm.wait() -> MultiStats; await cm.close()

    dm = DaemonMulti(relay_host, relay_port, *, auth_line=None, crypto=None,
                     local_host="localhost", local_port=22, timeout=60.0,
                     relay_timeout=10.0, impl=None)
    await dm.connect()                    # control channel up (optional; run() does it)
    stats = await dm.run() -> MultiStats

Lower level: ``bridge(local_sock, relay_sock, crypto, is_client=..., conn_id=0, impl=None)``
pumps two connected sockets; ``connect_relay(host, port, auth_line)`` opens a relay socket
with the auth line already sent.

``auth_line`` is the relay auth line (``noports.crypto.envelope.relay_auth_line(...)``),
sent first on every relay socket; None when the relay does not authenticate that side.
``impl`` picks the transfer loop: "c" (compiled), "py" (pure) or None (default, see
``noports._compat.speedups``). Errors: ``IntegrityError``/``TruncationError`` (AEAD),
``PeerTimeoutError``, ``ConnectError``, ``OSError``; after an integrity failure or a cut
the local socket is reset, never closed in order.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# eager: both tunnel modes use it, and the submodule's name is also the function's (a lazy
# name would be shadowed by the submodule once another part imports it)
from .bridge import BridgeStats, bridge, make_pumps

if TYPE_CHECKING:
    from ..crypto.stream import CtrKeys
    from .control import (
        Connect,
        ControlParser,
        Heartbeat,
        Unknown,
        format_connect,
        parse_message,
    )
    from .keys import AeadKeys, TunnelCrypto, mode_name, session_id_from_auth
    from .multi import ClientMulti, ControlChannel, DaemonMulti, MultiStats, run_daemon_multi
    from .net import client_bind_host, connect_relay, connect_tcp, listen
    from .single import SingleClient, open_client_single, run_daemon_single

# Each name is imported from its module on first use (PEP 562), so a program imports only
# the parts it uses: npt the multi mode, sshnp the single mode (issue 11: start-up).
_WHERE = {
    "CtrKeys": "noports.crypto.stream",
    **dict.fromkeys(
        ("Connect", "ControlParser", "Heartbeat", "Unknown", "format_connect", "parse_message"),
        ".control",
    ),
    **dict.fromkeys(("AeadKeys", "TunnelCrypto", "mode_name", "session_id_from_auth"), ".keys"),
    **dict.fromkeys(
        ("ClientMulti", "ControlChannel", "DaemonMulti", "MultiStats", "run_daemon_multi"),
        ".multi",
    ),
    **dict.fromkeys(("client_bind_host", "connect_relay", "connect_tcp", "listen"), ".net"),
    **dict.fromkeys(("SingleClient", "open_client_single", "run_daemon_single"), ".single"),
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "AeadKeys",
    "BridgeStats",
    "ClientMulti",
    "Connect",
    "ControlChannel",
    "ControlParser",
    "CtrKeys",
    "DaemonMulti",
    "Heartbeat",
    "MultiStats",
    "SingleClient",
    "TunnelCrypto",
    "Unknown",
    "bridge",
    "client_bind_host",
    "connect_relay",
    "connect_tcp",
    "format_connect",
    "listen",
    "make_pumps",
    "mode_name",
    "open_client_single",
    "parse_message",
    "run_daemon_multi",
    "run_daemon_single",
    "session_id_from_auth",
]
