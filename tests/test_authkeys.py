"""authorized_keys: strict key parsing, daemon-controlled options, crash-safe writes (T9)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from noports.crypto.sshkey import (
    KEY_TYPES,
    MAX_KEY_TEXT,
    InvalidPublicKeyError,
    SshPublicKey,
    parse_public_key,
)
from noports.errors import ConfigError, KeyFileError
from noports.sshnpd.authkeys import (
    AuthorizedKeys,
    ephemeral_comment,
    ephemeral_options,
    validate_options,
)

REPO = Path(__file__).resolve().parents[1]


def _openssh(key: object) -> str:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@pytest.fixture(scope="module")
def k() -> dict[str, str]:
    """Valid public keys by name (OpenSSH one-line form, no comment)."""
    out = {
        "ed25519": _openssh(ed25519.Ed25519PrivateKey.generate().public_key()),
        "ed25519b": _openssh(ed25519.Ed25519PrivateKey.generate().public_key()),
        "p256": _openssh(ec.generate_private_key(ec.SECP256R1()).public_key()),
        "p384": _openssh(ec.generate_private_key(ec.SECP384R1()).public_key()),
        "p521": _openssh(ec.generate_private_key(ec.SECP521R1()).public_key()),
        "rsa": _openssh(rsa.generate_private_key(65537, 2048).public_key()),
        "rsa1024": _openssh(rsa.generate_private_key(65537, 1024).public_key()),
    }
    pk = os.urandom(32)
    out["sk"] = "sk-ssh-ed25519@openssh.com " + _b64(
        _s(b"sk-ssh-ed25519@openssh.com") + _s(pk) + _s(b"ssh:")
    )
    return out


def test_valid_keys_parse(k: dict[str, str]) -> None:
    for name in ("ed25519", "p256", "p384", "p521", "rsa", "sk"):
        key = parse_public_key(k[name])
        assert key.key_text() == k[name]
    c = parse_public_key(k["ed25519"] + " alice@laptop")
    assert c.comment == "alice@laptop"
    rsa_b64 = k["rsa"].split()[1]
    for alg in ("rsa-sha2-256", "rsa-sha2-512"):
        key = parse_public_key(f"{alg} {rsa_b64}")
        assert key.key_type == "ssh-rsa"  # written out as the key type sshd expects
    assert parse_public_key(k["ed25519"].encode()) == parse_public_key(k["ed25519"])


def _flip_pad_bits(b64: str) -> str:
    """Same bytes, different text: set the unused low bits of the last base64 digit."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = b64.rstrip("=")
    last = alphabet[alphabet.index(body[-1]) | 0b11]
    out = body[:-1] + last + "=" * (len(b64) - len(body))
    assert out != b64 and base64.b64decode(out) == base64.b64decode(b64)
    return out


def _malicious(k: dict[str, str]) -> dict[str, str | bytes]:
    ed = k["ed25519"]
    ed_b64 = ed.split()[1]
    rsa_b64 = k["rsa"].split()[1]
    ed_blob = base64.b64decode(ed_b64)
    pt = os.urandom(32)
    return {
        "newline injection": ed + "\nssh-rsa " + rsa_b64 + " attacker",
        "newline injection after comment": ed + " me\nssh-ed25519 " + ed_b64,
        "crlf": ed + "\r\n",
        "trailing lf": ed + "\n",
        "cr only": ed + '\rcommand="sh" ' + ed,
        "nul byte": ed + "\x00",
        "nul in blob": ed[:30] + "\x00" + ed[30:],
        "command prefix": 'command="sh" ' + ed,
        "restrict prefix": "restrict " + ed,
        "environment prefix": 'environment="LD_PRELOAD=/tmp/x.so" ' + ed,
        "from prefix": 'from="*" ' + ed,
        "one megabyte": "ssh-ed25519 " + "A" * (1 << 20),
        "just over cap": ed + " " + "a" * (MAX_KEY_TEXT - len(ed)),
        "1MB bytes": b"ssh-ed25519 " + b"A" * (1 << 20),
        "non-ascii bytes": ed.encode() + b" \xff\xfe",
        "type mismatch ed->rsa": "ssh-ed25519 " + rsa_b64,
        "type mismatch rsa->ed": "ssh-rsa " + ed_b64,
        "type mismatch rsa-sha2->ed": "rsa-sha2-512 " + ed_b64,
        "curve mismatch": "ecdsa-sha2-nistp256 " + k["p384"].split()[1],
        "sk mismatch": "sk-ssh-ed25519@openssh.com " + ed_b64,
        "dsa": "ssh-dss " + _b64(_s(b"ssh-dss") + _s(b"\x01") * 4),
        "certificate": "ssh-ed25519-cert-v01@openssh.com " + ed_b64,
        "trailing blob data": "ssh-ed25519 " + _b64(ed_blob + b"junk"),
        "truncated blob": "ssh-ed25519 " + _b64(ed_blob[:-1]),
        "short ed25519": "ssh-ed25519 " + _b64(_s(b"ssh-ed25519") + _s(pt[:31])),
        "bad ec point": "ecdsa-sha2-nistp256 "
        + _b64(_s(b"ecdsa-sha2-nistp256") + _s(b"nistp256") + _s(b"\x04" + b"\x00" * 64)),
        "rsa 1024": k["rsa1024"],
        "missing padding": "ecdsa-sha2-nistp256 " + k["p256"].split()[1].rstrip("="),
        "non-zero pad bits": "ecdsa-sha2-nistp256 " + _flip_pad_bits(k["p256"].split()[1]),
        "base64 junk": "ssh-ed25519 AAAA$$$$",
        "sk bad application": "sk-ssh-ed25519@openssh.com "
        + _b64(_s(b"sk-ssh-ed25519@openssh.com") + _s(pt) + _s(b"evil\n")),
        "tab separator": "ssh-ed25519\t" + ed_b64,
        "double space": "ssh-ed25519  " + ed_b64,
        "leading space": " " + ed,
        "empty": "",
        "type only": "ssh-ed25519",
        "type only with space": "ssh-ed25519 ",
        "homoglyph type": "\u0455sh-ed25519 " + ed_b64,
        "comment quote": ed + ' "quoted"',
        "comment backslash": ed + " a\\b",
        "comment escape": ed + " \x1b[2J",
        "comment unicode": ed + " caf\u00e9",
        "comment too long": ed + " " + "a" * 300,
        "comment trailing space": ed + " me ",
        "c prefix bug: no type at all": "attacker-controlled text",
        "c prefix bug: type glued to blob": "ssh-ed25519" + ed_b64,
        "c prefix bug: only a matching prefix": "ssh-" + "x" * 40,
        "c prefix bug: options after prefix-like text": 'ssh-rsa,command="sh" ' + ed,
        "vertical tab": ed + "\x0bcommand",
    }


def _seed(path: Path, content: bytes) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, 0o600)


@pytest.mark.parametrize(
    "content", [b"", b"ssh-ed25519 AAAAexisting user@h\n", b"no-final-newline"]
)
def test_malicious_keys_rejected_file_byte_identical(
    tmp_path: Path, k: dict[str, str], content: bytes
) -> None:
    cases = _malicious(k)
    assert len(cases) >= 25
    ak_path = tmp_path / ".ssh" / "authorized_keys"
    _seed(ak_path, content)
    before = hashlib.sha256(ak_path.read_bytes()).digest()
    ak = AuthorizedKeys(ak_path)
    for name, text in cases.items():
        with pytest.raises(InvalidPublicKeyError):
            ak.add_client_key(text)
        assert hashlib.sha256(ak_path.read_bytes()).digest() == before, name
    assert stat.S_IMODE(ak_path.stat().st_mode) == 0o600
    # refused before any lock or temp file is created
    assert sorted(p.name for p in ak_path.parent.iterdir()) == ["authorized_keys"]


def test_error_messages_are_single_line(k: dict[str, str]) -> None:
    for text in _malicious(k).values():
        try:
            parse_public_key(text)
        except InvalidPublicKeyError as exc:
            msg = str(exc)
            assert "\n" not in msg and "\r" not in msg and "\x00" not in msg and len(msg) < 300


def test_valid_key_appended_exactly_once(tmp_path: Path, k: dict[str, str]) -> None:
    ak_path = tmp_path / ".ssh" / "authorized_keys"
    _seed(ak_path, b"ssh-ed25519 AAAAold user@h")  # no final newline: must be fixed first
    ak = AuthorizedKeys(ak_path)
    assert ak.add_client_key(k["ed25519"] + " alice@laptop", permissions='from="10.0.0.0/8"')
    assert not ak.add_client_key(k["ed25519"] + " alice@laptop", permissions='from="10.0.0.0/8"')
    assert not ak.add_client_key(k["ed25519"])  # same key, no comment, other options
    assert ak_path.read_bytes() == (
        b"ssh-ed25519 AAAAold user@h\n"
        + f'from="10.0.0.0/8" {k["ed25519"]} alice@laptop\n'.encode()
    )
    rsa_b64 = k["rsa"].split()[1]
    assert ak.add_client_key(f"rsa-sha2-512 {rsa_b64}")
    assert not ak.add_client_key(f"ssh-rsa {rsa_b64}")  # same key under its key-type name
    assert ak_path.read_bytes().endswith(f"ssh-rsa {rsa_b64}\n".encode())
    assert ak.contains(parse_public_key(k["rsa"]))
    assert not ak.contains(parse_public_key(k["ed25519b"]))


def test_creates_ssh_dir_under_umask_000(tmp_path: Path, k: dict[str, str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ak_path = home / ".ssh" / "authorized_keys"
    old = os.umask(0)
    try:
        ak = AuthorizedKeys(ak_path)
        assert ak.add_client_key(k["p256"])
        sid = str(uuid.uuid4())
        assert ak.add_ephemeral(k["ed25519b"], sid, ephemeral_options(22))
        assert ak.remove_session(sid) == 1
    finally:
        os.umask(old)
    assert stat.S_IMODE(ak_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(ak_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ak.lock_path.stat().st_mode) == 0o600
    assert ak_path.read_text() == k["p256"] + "\n"


def test_existing_group_readable_file_becomes_0600(tmp_path: Path, k: dict[str, str]) -> None:
    ak_path = tmp_path / ".ssh" / "authorized_keys"
    _seed(ak_path, b"")
    os.chmod(ak_path, 0o644)
    AuthorizedKeys(ak_path).add_client_key(k["ed25519"])
    assert stat.S_IMODE(ak_path.stat().st_mode) == 0o600


def test_symlinked_authorized_keys_refused(tmp_path: Path, k: dict[str, str]) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / ".ssh").mkdir(mode=0o700)
    ak_path = tmp_path / ".ssh" / "authorized_keys"
    ak_path.symlink_to(target)
    with pytest.raises(KeyFileError):  # O_NOFOLLOW on read, and write_secret refuses too
        AuthorizedKeys(ak_path).add_client_key(k["ed25519"])
    assert target.read_bytes() == b""


def test_ephemeral_add_and_remove_by_session(tmp_path: Path, k: dict[str, str]) -> None:
    ak_path = tmp_path / ".ssh" / "authorized_keys"
    _seed(ak_path, b"# keep me\nssh-ed25519 AAAAother\n")
    ak = AuthorizedKeys(ak_path)
    s1, s2 = str(uuid.uuid4()), str(uuid.uuid4())
    ak.add_ephemeral(k["ed25519"], s1, ephemeral_options(22))
    ak.add_ephemeral(k["ed25519b"], s2, ephemeral_options(2222, "no-pty"))
    text = ak_path.read_text()
    assert (
        f'command="echo \\"ssh session complete\\";sleep 20",PermitOpen="localhost:22" '
        f"{k['ed25519']} sshnp_ephemeral_{s1}\n"
    ) in text
    assert f'PermitOpen="localhost:2222",no-pty {k["ed25519b"]} sshnp_ephemeral_{s2}\n' in text
    assert ak.remove_session(s1.upper()) == 1
    assert ak.remove_session(s1) == 0
    assert ak_path.read_text() == (
        "# keep me\nssh-ed25519 AAAAother\n"
        f'command="echo \\"ssh session complete\\";sleep 20",PermitOpen="localhost:2222",no-pty '
        f"{k['ed25519b']} sshnp_ephemeral_{s2}\n"
    )
    with pytest.raises(ConfigError):
        ak.remove_session("../../etc")
    with pytest.raises(ConfigError):
        ephemeral_comment("x\nssh-rsa")


def test_options_validation() -> None:
    for ok in ["", "restrict", 'from="10.0.0.1",no-pty', 'command="echo \\"hi\\""', "restrict,pty"]:
        assert validate_options(ok) == ok
    for bad in [
        "restrict\n",
        'command="sh"\nssh-rsa AAAA',
        "restrict ",
        " restrict",
        "a,,b",
        ",a",
        'command="unterminated',
        'command="x"y',
        "no pty",
        'command="a\x00b"',
        "a,",
        "=x",
        'command="\x1b"',
        "r\u00e9strict",
    ]:
        with pytest.raises(ConfigError):
            validate_options(bad)


def test_ephemeral_options_styles() -> None:
    assert ephemeral_options(22) == (
        'command="echo \\"ssh session complete\\";sleep 20",PermitOpen="localhost:22"'
    )
    exp = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert ephemeral_options(2222, style="restrict", expiry=exp) == (
        'restrict,port-forwarding,command="echo \\"ssh session complete\\";sleep 20",'
        'permitopen="localhost:2222",expiry-time="20300102030405Z"'
    )
    with pytest.raises(ConfigError):
        ephemeral_options(0)
    with pytest.raises(ConfigError):
        ephemeral_options(22, "x\ny")
    with pytest.raises(ConfigError):
        ephemeral_options(22, style="restrict", expiry=dt.datetime(2030, 1, 1))
    with pytest.raises(ConfigError):
        ephemeral_options(22, style="bogus")


def test_add_key_comment_checked(tmp_path: Path, k: dict[str, str]) -> None:
    ak = AuthorizedKeys(tmp_path / ".ssh" / "authorized_keys")
    key = parse_public_key(k["ed25519"])
    with pytest.raises(ConfigError):
        ak.add_key(key, comment="x\nssh-rsa AAAA")
    with pytest.raises(ConfigError):
        ak.add_key(key, options="restrict\n")
    assert isinstance(key, SshPublicKey)


# ------------------------------------------------------------------------ crash safety
_CHILD = textwrap.dedent(
    """
    import os, sys, time
    phase, path, key = sys.argv[1], sys.argv[2], sys.argv[3]
    real_replace = os.replace
    def replace(src, dst):
        if phase == "before":
            print("TMP " + os.fspath(src), flush=True)
            time.sleep(60)
        real_replace(src, dst)
        if phase == "after":
            print("DONE", flush=True)
            time.sleep(60)
    os.replace = replace
    from noports.sshnpd.authkeys import AuthorizedKeys
    AuthorizedKeys(path).add_client_key(key)
    """
)


def _spawn(phase: str, path: Path, key: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        [sys.executable, "-c", _CHILD, phase, str(path), key],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line, "child did not reach the pause point"
    return p, line


@pytest.mark.parametrize("phase", ["before", "after"])
def test_kill_9_between_temp_write_and_rename(
    tmp_path: Path, k: dict[str, str], phase: str
) -> None:
    ak_path = tmp_path / ".ssh" / "authorized_keys"
    old = b"ssh-ed25519 AAAAold user@h\n"
    _seed(ak_path, old)
    new = old + (k["ed25519"] + "\n").encode()
    old_umask = os.umask(0)
    try:
        proc, line = _spawn(phase, ak_path, k["ed25519"])
    finally:
        os.umask(old_umask)
    try:
        if phase == "before":
            tmp = Path(line.split(" ", 1)[1])
            assert tmp.read_bytes() == new  # fully written and fsynced before the rename
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
            # the child holds the lock: a second writer would block, so just check the state
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    survivor = old if phase == "before" else new
    assert ak_path.read_bytes() == survivor
    assert stat.S_IMODE(ak_path.stat().st_mode) == 0o600
    # the lock died with the child; the next writer succeeds and cleans the stale temp file
    ak = AuthorizedKeys(ak_path)
    ak.add_client_key(k["ed25519b"])
    assert ak_path.read_bytes() == survivor + (k["ed25519b"] + "\n").encode()
    assert not [p for p in ak_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ak_path = tmp_path / ".ssh" / "authorized_keys"
    keys = [_openssh(ed25519.Ed25519PrivateKey.generate().public_key()) for _ in range(24)]
    script = textwrap.dedent(
        """
        import sys
        from noports.sshnpd.authkeys import AuthorizedKeys
        ak = AuthorizedKeys(sys.argv[1])
        for key in sys.argv[2:]:
            ak.add_client_key(key)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(ak_path), *keys[i::4], *keys[:3]], env=env
        )
        for i in range(4)
    ]
    for p in procs:
        assert p.wait(30) == 0
    lines = ak_path.read_text().splitlines()
    assert sorted(lines) == sorted(keys)  # every key once, none lost, none duplicated


# ------------------------------------------------------------------ real OpenSSH check
def test_real_sshd_honours_written_lines(tmp_path: Path) -> None:
    """The lines we write are understood by OpenSSH: options apply and expiry-time works."""
    from tests.sshd import Sshd, SshdUnavailable

    try:
        sshd = Sshd(tmp_path / "sshd").start()
    except SshdUnavailable as exc:
        pytest.skip(str(exc))
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")],
            check=True,
            capture_output=True,
        )
        pub = (tmp_path / "id.pub").read_text().split()
        key = f"{pub[0]} {pub[1]}"
        ak = AuthorizedKeys(sshd.authorized_keys)
        future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        stamp = future.strftime("%Y%m%d%H%M%SZ")
        assert ak.add_client_key(
            key, permissions=f'restrict,command="echo noports-ok",expiry-time="{stamp}"'
        )
        args = sshd.ssh_args("echo", "not-this")
        args[args.index(str(sshd.client_key))] = str(tmp_path / "id")
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "noports-ok", out.stderr
        # the same line with an expiry-time in the past is refused by sshd
        text = sshd.authorized_keys.read_text().replace(stamp, "20200101000000Z")
        sshd.authorized_keys.write_text(text)
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
        assert out.returncode == 255 and "noports-ok" not in out.stdout
    finally:
        sshd.close()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_hypothesis_parser_only_raises_its_error(text: str | bytes) -> None:
    try:
        key = parse_public_key(text)
    except InvalidPublicKeyError as exc:
        assert "\n" not in str(exc)
        return
    assert "\n" not in key.line()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.sampled_from(sorted(set(KEY_TYPES))))
def test_hypothesis_random_blobs_are_refused_cleanly(blob: bytes, declared: str) -> None:
    embedded = KEY_TYPES[declared].encode()
    for b in (blob, _s(embedded) + blob):
        try:
            parse_public_key(f"{declared} {_b64(b)}" if b else declared)
        except InvalidPublicKeyError:
            continue
