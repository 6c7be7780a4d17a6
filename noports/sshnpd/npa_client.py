"""The daemon side of the NPA policy check (spec 8, 6.3): an AtRpc client with a cache.

For a sender that is neither a manager nor the policy atSign itself, a daemon started with
``-p @policy`` asks the policy service whether the sender may use this device:

* request P1: notification ``request.<reqId>.auth_checks.__rpcs.sshnp`` to ``@policy`` with
  ``{"reqId":<int>,"payload":{"daemonAtsign","daemonDeviceName","daemonDeviceGroupName",
  "clientAtsign"}}``, ttln 30 s, ``reqId`` = microseconds since the epoch (made unique);
* responses P2 arrive on the daemon's monitor as ``<respType>.<reqId>.auth_checks.__rpcs.sshnp``
  from ``@policy``; the daemon routes them to :meth:`NpaClient.on_response`. ``ack`` is
  ignored; ``success`` carries ``{"authorized","message","permitOpen"}``; ``nack``/``error``
  mean denied. The id in the key must equal ``reqId`` in the value, and only the policy
  atSign may answer.
* no decision within 10 s: denied ("Timed out waiting for authorizer response"). Sending
  retries 4 times (back-off 200 ms, 1 s, 5 s) when the notify itself fails.
* decisions (allow and deny, not time-outs) are cached 15 s per client atSign, and
  concurrent checks for one client share one request.

``permitOpen`` from the policy is parsed non-strictly: a malformed grant grants nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import NoPortsError
from ..log import escape
from ..session.permitopen import PermitOpen

log = logging.getLogger("noports.sshnpd.npa")

RPC_DOMAIN = "auth_checks.__rpcs"
NAMESPACE = "sshnp"
DEFAULT_TIMEOUT = 10.0
CACHE_TTL = 15.0
REQUEST_TTLN_MS = 30_000
SEND_BACKOFF = (0.2, 1.0, 5.0)
#: The monitor regex fragment for P2 responses.
RESPONSE_REGEX = r"\.auth_checks\.__rpcs\.sshnp@"
_RESP_KEY = re.compile(
    r"(ack|nack|success|error)\.(\d{1,20})\.auth_checks\.__rpcs\.sshnp", re.ASCII
)
TIMEOUT_MESSAGE = "Timed out waiting for authorizer response"

Notifier = Callable[[str, str, str], Awaitable[Any]]


@dataclass(frozen=True)
class AuthDecision:
    authorized: bool
    message: str | None
    permit: PermitOpen


def parse_response_key(short_key: str) -> tuple[str, int] | None:
    """``(respType, reqId)`` of a P2 key (``success.123.auth_checks.__rpcs.sshnp``), or None."""
    m = _RESP_KEY.fullmatch(short_key)
    return (m.group(1), int(m.group(2))) if m else None


def decision_from_response(resp_type: str, value: Any) -> AuthDecision:
    """The decision a P2 value carries (``value`` already JSON-decoded)."""
    payload = value.get("payload") if isinstance(value, dict) else None
    if resp_type != "success":
        msg = payload.get("message") if isinstance(payload, dict) else None
        return AuthDecision(
            False, str(msg) if msg else f"authorizer answered {resp_type}", PermitOpen()
        )
    if not isinstance(payload, dict) or payload.get("authorized") is not True:
        msg = payload.get("message") if isinstance(payload, dict) else None
        return AuthDecision(
            False, str(msg) if msg else "not authorized by the policy", PermitOpen()
        )
    po = payload.get("permitOpen")
    permit = PermitOpen.parse(po if isinstance(po, list) else [], strict=False)
    if permit.rejected:
        log.warning(
            "policy sent malformed permitOpen entries (ignored): %s",
            escape(", ".join(permit.rejected), 300),
        )
    msg = payload.get("message")
    return AuthDecision(True, str(msg) if isinstance(msg, str) else None, permit)


class NpaClient:
    """Ask ``policy`` about client atSigns; see the module docstring."""

    def __init__(
        self,
        notify: Notifier,
        *,
        policy: str,
        daemon: str,
        device: str,
        device_group: str,
        timeout: float = DEFAULT_TIMEOUT,
        cache_ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notify = notify
        self.policy = policy
        self.daemon = daemon
        self.device = device
        self.device_group = device_group
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[AuthDecision, float]] = {}
        self._inflight: dict[str, asyncio.Future[AuthDecision]] = {}
        self._waiting: dict[int, asyncio.Future[AuthDecision]] = {}
        self._last_id = 0

    def _new_id(self) -> int:
        rid = max(time.time_ns() // 1000, self._last_id + 1)
        self._last_id = rid
        return rid

    async def check(self, client_atsign: str) -> AuthDecision:
        now = self._clock()
        hit = self._cache.get(client_atsign)
        if hit is not None and now - hit[1] < self.cache_ttl:
            return hit[0]
        fut = self._inflight.get(client_atsign)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[client_atsign] = fut
            try:
                decision = await self._ask(client_atsign)
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved here; sharers re-raise it
                raise
            finally:
                self._inflight.pop(client_atsign, None)
            fut.set_result(decision)
            return decision
        return await asyncio.shield(fut)

    async def _ask(self, client_atsign: str) -> AuthDecision:
        rid = self._new_id()
        fut: asyncio.Future[AuthDecision] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        body = json.dumps(
            {
                "reqId": rid,
                "payload": {
                    "daemonAtsign": self.daemon,
                    "daemonDeviceName": self.device,
                    "daemonDeviceGroupName": self.device_group,
                    "clientAtsign": client_atsign,
                },
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            for attempt in range(len(SEND_BACKOFF) + 1):
                try:
                    await asyncio.wait_for(
                        self._notify(self.policy, f"request.{rid}.{RPC_DOMAIN}", body),
                        max(0.1, deadline - loop.time()),
                    )
                    break
                except (NoPortsError, OSError, asyncio.TimeoutError) as exc:
                    if attempt == len(SEND_BACKOFF) or loop.time() >= deadline:
                        log.warning("cannot send the auth check to %s: %s", self.policy, exc)
                        return AuthDecision(
                            False, f"cannot reach the authorizer: {exc}", PermitOpen()
                        )
                    await asyncio.sleep(SEND_BACKOFF[attempt])
            try:
                decision = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return AuthDecision(False, TIMEOUT_MESSAGE, PermitOpen())
        finally:
            self._waiting.pop(rid, None)
        self._cache[client_atsign] = (decision, self._clock())
        if len(self._cache) > 10_000:
            cutoff = self._clock() - self.cache_ttl
            self._cache = {k: v for k, v in self._cache.items() if v[1] >= cutoff}
        return decision

    def on_response(self, sender: str, short_key: str, value: str | None) -> bool:
        """Route a P2 notification; True if it was one of ours (consumed)."""
        parsed = parse_response_key(short_key)
        if parsed is None:
            return False
        resp_type, rid = parsed
        if sender != self.policy:
            log.warning(
                "ignoring an auth-check response from %s (not the policy manager)",
                escape(sender, 80),
            )
            return True
        try:
            obj = json.loads(value or "")
        except ValueError:
            log.warning("ignoring an auth-check response that is not JSON")
            return True
        if not isinstance(obj, dict) or obj.get("reqId") != rid:
            log.warning("ignoring an auth-check response whose reqId does not match its key")
            return True
        if resp_type == "ack":
            return True
        fut = self._waiting.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(decision_from_response(resp_type, obj))
        return True
