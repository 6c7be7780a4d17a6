"""Bytes in, commands out: line framing with a hard cap, and one parser per verb (no I/O).

The official server matches verbs with fixed-order regexes; official clients do not always
send that order (atsdk puts ``sharedKeyEnc`` before ``isEncrypted`` and writes ``ccd:True``,
the C SDK writes ``message_type``). So metadata and notify options are parsed as ``name:value``
pairs in any order, names and booleans case-insensitively, and only the shapes are strict.
Every parse failure is ``AT0003`` (invalid syntax) unless a more specific code applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import AtError
from .keys import META_FIELDS, canon_meta_name, coerce_meta, normalise_atsign, parse_bool, parse_int

DEFAULT_BUFFER_LIMIT = 10_240_000  # Dart ByteBuffer(capacity: 10240000)


class LineBuffer:
    """Accumulates bytes and yields complete lines; refuses to hold more than ``limit`` bytes."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self._buf = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[str]:
        """Return the complete lines (``\\r\\n`` or ``\\n`` ended, trimmed; blank ones as ``""``,
        which the server answers as the Dart server does).

        Raises BufferLimitExceededError (AT0005) when an unfinished line passes the limit.
        """
        buf = self._buf
        buf += data
        if b"\n" not in data:
            if len(buf) > self.limit:
                buf.clear()
                raise AtError.for_code("AT0005", "buffer limit exceeded")
            return []
        *complete, tail = bytes(buf).split(b"\n")
        buf[:] = tail
        if len(tail) > self.limit:
            buf.clear()
            raise AtError.for_code("AT0005", "buffer limit exceeded")
        out = []
        for raw in complete:
            if len(raw) > self.limit:
                raise AtError.for_code("AT0005", "buffer limit exceeded")
            out.append(raw.decode("utf-8", errors="replace").strip())
        return out


def syntax(msg: str) -> AtError:
    return AtError.for_code("AT0003", msg)


MAX_JSON_DEPTH = 32
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of ``text``, ignoring brackets inside strings."""
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        t = m.group()
        if t in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif t in "]}":
            depth -= 1
    return deepest


def loads_client_json(text: str) -> Any:
    """``json.loads`` for request text, refusing deep nesting with AT0003 (not RecursionError)."""
    import json

    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise syntax(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    return json.loads(text)


@dataclass
class Command:
    """A parsed request: ``verb`` plus verb-specific fields in ``args``."""

    verb: str
    args: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.args[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.args.get(name, default)


_FROM_RE = re.compile(r"^(@?[^:@\s]+)(?::clientConfig:(\{.+\}))?$", re.I)
_PKAM_OPTS = {
    "signingalgo": "signingAlgo",
    "hashingalgo": "hashingAlgo",
    "enrollmentid": "enrollmentId",
}
_ROOT_NAME_RE = re.compile(r"^[^\x00-\x20\x7f:@\ufffd]{1,255}$")
_BARE_VERBS = {"scan", "info", "monitor", "noop", "stats", "@exit", "notify", "enroll", "otp"}


def parse_line(line: str) -> Command:
    """Parse one request line. Bare words that are not verbs are root-directory lookups."""
    verb_part, sep, rest = line.partition(":")
    head = verb_part.split(" ", 1)[0]
    verb = head.replace(" ", "").lower()
    if not sep and " " not in line and verb not in _BARE_VERBS:
        name = line.strip().lstrip("@").lower()
        if not _ROOT_NAME_RE.match(name):
            raise syntax("not a verb and not an atSign")
        return Command("root", {"name": name})
    if " " in verb_part and verb in ("scan", "monitor"):
        rest = verb_part[len(head) :] + (sep + rest if sep else "")
    fn = _PARSERS.get(verb)
    if fn is None:
        raise syntax(f"command {verb_part[:40]!r} is not a known verb")
    return fn(rest)


def _from(rest: str) -> Command:
    m = _FROM_RE.match(rest)
    if not m:
        raise syntax("from: expects an atSign")
    return Command("from", {"atsign": normalise_atsign(m.group(1)), "client_config": m.group(2)})


def _pkam(rest: str) -> Command:
    opts: dict[str, str] = {}
    parts = rest.split(":")
    i = 0
    while i < len(parts) - 1 and parts[i].lower() in _PKAM_OPTS:
        opts[_PKAM_OPTS[parts[i].lower()]] = parts[i + 1]
        i += 2
    sig = ":".join(parts[i:])
    if not sig:
        raise syntax("pkam: expects a signature")
    algo = opts.get("signingAlgo", "rsa2048").lower()
    hashing = opts.get("hashingAlgo", "sha256").lower()
    if algo not in ("rsa2048", "ecc_secp256r1") or hashing not in ("sha256", "sha512"):
        raise syntax("pkam: unsupported signing or hashing algorithm")
    return Command(
        "pkam",
        {
            "signature": sig,
            "signing_algo": algo,
            "hashing_algo": hashing,
            "enrollment_id": opts.get("enrollmentId"),
        },
    )


def _cram(rest: str) -> Command:
    if not re.fullmatch(r"[0-9a-fA-F]{1,256}", rest):
        raise syntax("cram: expects a hex digest")
    return Command("cram", {"digest": rest.lower()})


def _lookup_common(verb: str, rest: str, *, llookup: bool) -> Command:
    parts = rest.split(":")
    args: dict[str, Any] = {"op": None, "bypass_cache": False, "cached": False}
    while len(parts) > 1:
        p = parts[0].lower()
        if not llookup and p == "bypasscache" and len(parts) > 2:
            args["bypass_cache"] = parse_bool(parts[1])
            parts = parts[2:]
        elif p in ("meta", "all") and args["op"] is None:
            args["op"] = p
            parts = parts[1:]
        elif (
            llookup
            and p == "cached"
            and len(parts) > 1
            and (parts[1].startswith("@") or parts[1].lower() == "public")
        ):
            args["cached"] = True
            parts = parts[1:]
        else:
            break
    key = ":".join(parts)
    if not key:
        raise syntax(f"{verb}: expects a key")
    args["key"] = ("cached:" if args["cached"] else "") + key
    return Command(verb, args)


def _meta_and_rest(
    tokens: list[str], extra: dict[str, str] | None = None, *, ops: bool = False
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Consume leading ``name:value`` metadata (and ``extra`` option) pairs in any order.

    ``ops``: bare ``update``/``delete`` tokens are the notify operation.
    """
    meta: dict[str, Any] = {}
    opts: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        low = t.replace("_", "").lower()
        if ops and low in ("update", "delete"):
            opts["operation"] = low
            i += 1
            continue
        name = canon_meta_name(t)
        if name is not None and i + 1 < len(tokens):
            meta[name] = coerce_meta(name, tokens[i + 1])
            i += 2
            continue
        if extra is not None and low in extra and i + 1 < len(tokens):
            opts[extra[low]] = tokens[i + 1]
            i += 2
            continue
        break
    return meta, opts, tokens[i:]


def _update(rest: str) -> Command:
    if rest.lower().startswith("json:"):
        try:
            obj = loads_client_json(rest[5:])
            key, value = str(obj["key"]), obj.get("value")
            md = obj.get("metadata") or {}
        except (ValueError, KeyError, TypeError) as exc:
            raise syntax('update:json: expects {"key":…,"value":…}') from exc
        meta = {}
        for k, v in md.items():
            name = canon_meta_name(str(k))
            if name is not None and v is not None:
                meta[name] = coerce_meta(name, str(v).lower() if isinstance(v, bool) else str(v))
        return Command(
            "update", {"key": key, "value": None if value is None else str(value), "meta": meta}
        )
    head, sp, value = rest.partition(" ")
    if not sp:
        raise syntax("update: expects '<key> <value>'")
    # atsdk's metadata string may carry ttln even on update: accepted and ignored
    meta, _, tokens = _meta_and_rest(head.split(":"), {"ttln": "ttln"})
    if not tokens or not tokens[0]:
        raise syntax("update: expects a key")
    return Command("update", {"key": ":".join(tokens), "value": value, "meta": meta})


def _delete(rest: str) -> Command:
    parts = rest.split(":")
    args: dict[str, Any] = {"priority": None}
    if len(parts) > 2 and parts[0].lower() == "priority":
        args["priority"], parts = parts[1].lower(), parts[2:]
    key = ":".join(parts)
    if not key:
        raise syntax("delete: expects a key")
    args["key"] = key
    return Command("delete", args)


def _scan(rest: str) -> Command:
    head, _, regex = rest.partition(" ")
    args: dict[str, Any] = {
        "show_hidden": False,
        "for_atsign": None,
        "regex": regex.strip() or None,
    }
    parts = [p for p in head.split(":") if p]
    i = 0
    while i < len(parts):
        p = parts[i].lower()
        if p == "showhidden" and i + 1 < len(parts):
            args["show_hidden"] = parse_bool(parts[i + 1])
            i += 2
        elif p == "page" and i + 1 < len(parts):
            parse_int(parts[i + 1])
            i += 2
        elif p.startswith("@"):
            args["for_atsign"] = normalise_atsign(p)
            i += 1
        else:
            raise syntax(f"scan: unexpected {parts[i]!r}")
    return Command("scan", args)


_NOTIFY_OPTS = {
    "id": "id",
    "messagetype": "messageType",
    "priority": "priority",
    "strategy": "strategy",
    "latestn": "latestN",
    "notifier": "notifier",
    "ttln": "ttln",
}


def _notify(rest: str) -> Command:
    low = rest.lower()
    if low.startswith("status:"):
        return Command("notify:status", {"id": rest[7:]})
    if low.startswith("remove:"):
        return Command("notify:remove", {"id": rest[7:]})
    if low == "list" or low.startswith("list:") or low.startswith("list "):
        regex = rest[4:].lstrip(": ").strip()
        return Command("notify:list", {"regex": regex or None})
    if low.startswith("fetch:"):
        return Command("notify:fetch", {"id": rest[6:]})
    tokens = rest.split(":")
    meta, opts, tokens = _meta_and_rest(tokens, _NOTIFY_OPTS, ops=True)
    mtype = opts.get("messageType", "key").lower()
    if mtype not in ("key", "text"):
        raise syntax("notify: messageType is key or text")
    if len(tokens) < 2:
        raise syntax("notify: expects (public|@forAtSign):<key>")
    target = tokens[0].lower()
    if target != "public" and not target.startswith("@"):
        raise syntax("notify: expects (public|@forAtSign):<key>")
    if mtype == "text":
        key_text, value = ":".join(tokens[1:]), None
    else:
        key_text = tokens[1]
        value = ":".join(tokens[2:]) if len(tokens) > 2 else None
    args: dict[str, Any] = {
        "id": opts.get("id"),
        "operation": opts.get("operation", "update"),
        "message_type": mtype,
        "priority": opts.get("priority", "low").lower(),
        "strategy": opts.get("strategy", "all").lower(),
        "latest_n": parse_int(opts["latestN"]) if "latestN" in opts else 1,
        "notifier": opts.get("notifier", "SYSTEM"),
        "ttln": parse_int(opts["ttln"]) if "ttln" in opts else None,
        "target": target,
        "key": key_text,
        "value": value,
        "meta": meta,
    }
    if args["id"] is not None and not re.fullmatch(r"[\w-]{1,128}", args["id"]):
        raise syntax("notify: bad id")
    if args["priority"] not in ("low", "medium", "high") or args["strategy"] not in (
        "all",
        "latest",
    ):
        raise syntax("notify: bad priority or strategy")
    return Command("notify", args)


def _monitor(rest: str) -> Command:
    head, _, regex = rest.partition(" ")
    args: dict[str, Any] = {
        "strict": False,
        "self": False,
        "multiplexed": False,
        "since": None,
        "regex": regex.strip() or None,
    }
    for p in (p for p in head.split(":") if p):
        pl = p.lower()
        if pl == "strict":
            args["strict"] = True
        elif pl == "selfnotifications":
            args["self"] = True
        elif pl == "multiplexed":
            args["multiplexed"] = True
        elif re.fullmatch(r"\d{1,16}", p):
            args["since"] = int(p)
        else:
            raise syntax(f"monitor: unexpected {p!r}")
    return Command("monitor", args)


def _noop(rest: str) -> Command:
    return Command("noop", {"ms": parse_int(rest or "0")})


def _info(rest: str) -> Command:
    if rest and rest.lower() != "brief":
        raise syntax("info: only info or info:brief")
    return Command("info", {"brief": bool(rest)})


_ENROLL_OPS = ("request", "approve", "deny", "revoke", "list", "fetch", "unrevoke", "delete")


def _enroll(rest: str) -> Command:

    op, _, tail = rest.partition(":")
    op = op.lower()
    if op not in _ENROLL_OPS:
        raise syntax("enroll: unknown operation")
    force = False
    if tail.lower().startswith("force"):
        force, tail = True, tail[5:].lstrip(":")
    params: dict[str, Any] = {}
    if tail:
        try:
            params = loads_client_json(tail)
        except ValueError as exc:
            raise syntax("enroll: parameters must be JSON") from exc
        if not isinstance(params, dict):
            raise syntax("enroll: parameters must be a JSON object")
    return Command("enroll", {"op": op, "force": force, "params": params})


def _otp(rest: str) -> Command:
    parts = rest.split(":")
    op = parts[0].lower()
    args: dict[str, Any] = {"op": op, "ttl": None, "spp": None}
    rest_parts = parts[1:]
    if op == "put":
        if not rest_parts or not rest_parts[0]:
            raise syntax("otp:put expects a passcode")
        args["spp"], rest_parts = rest_parts[0], rest_parts[1:]
    elif op != "get":
        raise syntax("otp: get or put")
    if rest_parts:
        if len(rest_parts) != 2 or rest_parts[0].lower() != "ttl":
            raise syntax("otp: expects [:ttl:<ms>]")
        args["ttl"] = parse_int(rest_parts[1])
    return Command("otp", args)


def _keys(rest: str) -> Command:
    head, _, value = rest.partition(" ")
    parts = head.split(":")
    op = parts[0].lower()
    if op not in ("get", "put", "delete"):
        raise syntax("keys: get, put or delete")
    args: dict[str, Any] = {"op": op, "visibility": None, "value": value or None}
    i = 1
    while i < len(parts):
        p = parts[i].lower()
        if p in ("public", "private", "self"):
            args["visibility"] = p
            i += 1
        elif p == "keyname":
            args["keyName"] = ":".join(parts[i + 1 :])
            break
        elif i + 1 < len(parts):
            args[parts[i]] = parts[i + 1]
            i += 2
        else:
            raise syntax("keys: malformed")
    return Command("keys", args)


def _exit(rest: str) -> Command:
    return Command("exit")


_PARSERS = {
    "from": _from,
    "pkam": _pkam,
    "cram": _cram,
    "llookup": lambda r: _lookup_common("llookup", r, llookup=True),
    "lookup": lambda r: _lookup_common("lookup", r, llookup=False),
    "plookup": lambda r: _lookup_common("plookup", r, llookup=False),
    "update": _update,
    "delete": _delete,
    "scan": _scan,
    "notify": _notify,
    "monitor": _monitor,
    "noop": _noop,
    "info": _info,
    "enroll": _enroll,
    "otp": _otp,
    "keys": _keys,
    "@exit": _exit,
}

__all__ = ["Command", "LineBuffer", "parse_line", "META_FIELDS", "DEFAULT_BUFFER_LIMIT"]
