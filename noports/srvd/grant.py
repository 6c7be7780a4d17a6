"""Granting an admitted session request, without I/O (spec 4.2, latest spec 2.1-2.3).

:class:`~noports.srvd.requests.Admission` has already checked the request (parse, managers,
requester, quotas) and reserved its session id. What is left to decide before and after the
control process does its I/O (the session mutex, the key look-ups, the worker call, the
reply) lives here, in the order the control process asks:

1. :func:`needs_mutex`: race the other srvd instances of this atSign for the session mutex
   (old clients take one answer only);
2. :func:`plan`: the request's relay-auth fields and the refusals that depend on them and
   on the relay's settings (``--refuse-payload-auth``, ``only443`` without ``--443``); which
   public keys and signing keys the relay needs;
3. :func:`session_params`: the relay session (``relay.SessionSpec`` fields) from the plan
   and what the look-ups returned; :func:`key_refused` / :func:`create_refused` word the
   refusals when a look-up or the worker fails;
4. :func:`answer`: the reply (R2, CSV or JSON) and its log form with the nonce redacted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..crypto import escr, rsa
from ..errors import ProtocolError
from ..session.wire import RelayReply, relay_reply
from . import requests as rq
from .relayauth import RelayAuthFields, relay_auth_fields

#: the official refusal of an ``only443`` request by a relay without the 443 listener
#: (the same text as ``noports.relay.relay.NOT_BOUND_443``, which imports asyncio)
NOT_BOUND_443 = "Client requested port 443 but this relay is not bound to port 443"


@dataclass(frozen=True)
class Policy:
    """The relay settings the decisions read (from ``srvd.daemon.Settings``)."""

    ip: str
    json_response: bool = False
    refuse_payload_auth: bool = False
    single_port: bool = False  # the single-port (443) listener runs
    single_advertise: int = 443  # the port only443 replies name (official: always 443)


@dataclass(frozen=True)
class Plan:
    """An admitted request with its relay-auth fields: what the look-ups must fetch."""

    grant: rq.Grant
    auth: RelayAuthFields

    @property
    def escr(self) -> bool:
        return self.auth.mode == "escr"

    @property
    def key_owners(self) -> tuple[str | None, str | None]:
        """Whose public key each side's payload-mode auth line needs (None: no look-up)."""
        g, req = self.grant, self.grant.request
        return (
            g.atsign_a if req.auth_a and not self.escr else None,
            g.atsign_b if req.auth_b and not self.escr else None,
        )

    @property
    def prefetch(self) -> tuple[str, ...]:
        """The listed signing-key URIs of this session's two atSigns (others are ignored)."""
        if not self.escr:
            return ()
        mine = {self.grant.atsign_a.lower(), self.grant.atsign_b.lower()}
        return tuple(u for u in self.auth.prefetch if escr.uri_atsign(u) in mine)


@dataclass(frozen=True)
class Answer:
    reply: RelayReply
    value: str  # what the requester is notified (R2)
    shown: str  # the log form, nonce redacted


def needs_mutex(g: rq.Grant) -> bool:
    """An old client takes one answer only, and several srvd instances may serve this atSign:
    the instance that creates the session mutex record answers, the others stay silent
    (latest spec 2.2; ours races before binding ports, so losers bind none)."""
    return not g.request.multiple_acks_ok and not g.request.legacy


def plan(g: rq.Grant, value: str | None, policy: Policy) -> Plan:
    """The request's relay-auth fields, and the refusals that depend on them."""
    req = g.request
    sid = req.session_id
    try:
        ra = relay_auth_fields(value, legacy=req.legacy)
    except ProtocolError as exc:
        raise rq.Refusal(rq.INVALID, str(exc), sid) from None
    both = req.auth_a and req.auth_b
    if policy.refuse_payload_auth and not (ra.mode == "escr" and both):
        raise rq.Refusal(
            rq.DENIED,
            "this relay accepts only escr relay authentication on both sides "
            "(--refuse-payload-auth)",
            sid,
        )
    if ra.only443:
        if not policy.single_port:
            raise rq.Refusal(rq.DENIED, NOT_BOUND_443, sid)
        if not (ra.mode == "escr" and both):
            raise rq.Refusal(rq.DENIED, "port 443 sessions must use escr on both sides", sid)
    return Plan(g, ra)


def key_refused(p: Plan, who: str, exc: BaseException) -> rq.Refusal:
    return rq.Refusal(
        rq.ERROR, f"cannot get the public key of {who}: {exc}", p.grant.request.session_id
    )


def create_refused(p: Plan, exc: BaseException, *, ports_exhausted: bool) -> rq.Refusal:
    sid = p.grant.request.session_id
    if ports_exhausted:
        return rq.Refusal(rq.CAPACITY, "relay has no free ports", sid)
    return rq.Refusal(rq.ERROR, f"relay could not create the session ({exc})", sid)


def session_params(
    p: Plan,
    keys: tuple[rsa.PublicKey | None, rsa.PublicKey | None],
    prefetched: dict[str, str] | None,
) -> dict[str, Any]:
    """The fields of the relay's ``SessionSpec`` for this session."""
    g, req = p.grant, p.grant.request
    return {
        "session_id": req.session_id,
        "atsign_a": g.atsign_a,
        "atsign_b": g.atsign_b,
        "client_nonce": req.client_nonce or "",
        "auth_a": req.auth_a,
        "auth_b": req.auth_b,
        "public_key_a": keys[0],
        "public_key_b": keys[1],
        "auth_mode": p.auth.mode,
        "relay_auth_aes_key": p.auth.aes_key if p.escr else None,
        "only443": p.auth.only443,
        "prefetched": (prefetched or None) if p.escr else None,
    }


def params_line(p: Plan) -> tuple[Any, ...]:
    """The ``-v`` log line of a session's parameters (format, args)."""
    g, req = p.grant, p.grant.request
    return (
        "session %s params: atSignA %s atSignB %s authA %s authB %s legacy %s "
        "relayAuthMode %s only443 %s",
        g.session_id, g.atsign_a, g.atsign_b, req.auth_a, req.auth_b, req.legacy,
        p.auth.mode, p.auth.only443,
    )


def redact(secret: str | None) -> str:
    """A nonce for the log: enough to correlate, not enough to use."""
    if not secret:
        return "null"
    return secret[:4] + "..." if len(secret) > 8 else "..."


def answer(p: Plan, made: dict[str, Any], policy: Policy) -> Answer:
    """R2 for the session a worker made (``port_a``, ``port_b``, ``rvd_nonce``)."""
    req = p.grant.request
    port_a, port_b = int(made["port_a"]), int(made["port_b"])
    if p.auth.only443:  # official: the single-port sessions always answer 443,443
        port_a = port_b = policy.single_advertise
    reply = RelayReply(policy.ip, port_a, port_b, None if req.legacy else str(made["rvd_nonce"]))
    json_form = not req.legacy and (req.json_response or policy.json_response)
    shown = relay_reply(
        RelayReply(
            reply.host,
            reply.port_a,
            reply.port_b,
            redact(reply.rvd_nonce) if reply.rvd_nonce else None,
        )
    )
    return Answer(reply, relay_reply(reply, json_form=json_form), shown)
