"""Configuration layers: command line > environment > TOML file (DESIGN decision 8).

Every program gets, for free, an environment variable and a TOML key for each of its flags:

* **Environment**: ``NOPORTS_<PROG>_<DEST>`` (``NOPORTS_SSHNPD_DEVICE``); the per-program
  prefix keeps ``--key-file`` for ``sshnpd`` and ``sshnp`` on one host apart. A few options
  that mean the same thing everywhere (:data:`GLOBAL_DESTS`: ``root``, ``ca_file``,
  ``root_domain``, ``log_format``) also read ``NOPORTS_<DEST>``, so one export points a whole
  shell at a test server. ``<NAME>_FILE`` reads the value from a file instead (for secrets,
  container style); setting both ``X`` and ``X_FILE`` is an error.
* **TOML file**: a flat table whose keys are the long option names (``key-file`` or
  ``key_file``). Unknown keys are errors naming the key and the file (typos must not silently
  drop a security setting). Values are typed: booleans for switches, integers for ``type=int``,
  arrays for ``append``/``nargs`` options.
* **Command line** wins over both.

:func:`parse_args` wires this into an ``argparse`` parser. :func:`load_env_file` reads the
official sshnp profile format (``KEY=VALUE``) with two fixes: a value containing ``=`` is kept
(split on the first ``=``), and a malformed line is an error with its line number.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .log import escape
from .record import Frozen, Record, set_field


def _tomllib() -> Any:
    """``tomllib`` when a config file is read (not at import: 4-10 ms at every start)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 needs the tomli backport
        import tomli as tomllib
    return tomllib


__all__ = [
    "GLOBAL_DESTS",
    "ENV_PREFIX",
    "ConfigLayers",
    "env_names",
    "option_table",
    "load_toml",
    "read_env",
    "layers",
    "parse_args",
    "parse_env_file",
    "load_env_file",
    "parse_bool",
]

_log = logging.getLogger("noports.config")
ENV_PREFIX = "NOPORTS_"
GLOBAL_DESTS = frozenset({"root", "ca_file", "root_domain", "log_format"})
MAX_SECRET_FILE = 64 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_ENV_KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*", re.ASCII)
_SKIP = (argparse._HelpAction, argparse._VersionAction)  # noqa: SLF001 - stable for decades


def parse_bool(text: str, *, where: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ConfigError(f"{where}: expected a boolean (true/false), got {text[:40]!r}")


def _prog_key(prog: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", prog).upper()


def env_names(prog: str, dest: str) -> list[str]:
    """Environment variable names for ``dest``, most specific first."""
    names = [f"{ENV_PREFIX}{_prog_key(prog)}_{dest.upper()}"]
    if dest in GLOBAL_DESTS:
        names.append(f"{ENV_PREFIX}{dest.upper()}")
    return names


class _Opt(Frozen):
    __slots__ = ("dest", "action", "kind")
    dest: str
    action: argparse.Action
    kind: str  # "bool", "list" or "value"

    def __init__(self, dest: str, action: argparse.Action, kind: str) -> None:
        set_field(self, "dest", dest)
        set_field(self, "action", action)
        set_field(self, "kind", kind)


def option_table(parser: argparse.ArgumentParser) -> dict[str, _Opt]:
    """``dest`` -> option info for every optional flag (positionals and help excluded)."""
    out: dict[str, _Opt] = {}
    for a in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if isinstance(a, _SKIP) or not a.option_strings or a.dest == argparse.SUPPRESS:
            continue
        if isinstance(
            a,
            (
                argparse._StoreTrueAction,
                argparse._StoreFalseAction,  # noqa: SLF001
                argparse.BooleanOptionalAction,
            ),
        ):
            kind = "bool"
        elif (
            isinstance(a, argparse._AppendAction)
            or a.nargs in ("*", "+")
            or isinstance(a.nargs, int)
        ):  # noqa: SLF001
            kind = "list"
        elif isinstance(a, argparse._StoreAction):  # noqa: SLF001
            kind = "value"
        else:
            continue  # count / const actions have no natural file or env form
        out.setdefault(a.dest, _Opt(a.dest, a, kind))
    return out


def _convert_one(opt: _Opt, value: Any, where: str, from_text: bool) -> Any:
    """One scalar: strings go through the option's ``type``; TOML numbers must fit it."""
    a = opt.action
    typ = a.type if callable(a.type) else None
    try:
        if isinstance(value, str) and not from_text and typ in (int, float):
            raise ConfigError(f"{where}: expected a {typ.__name__}, got a string")
        if isinstance(value, str):
            if typ is not None:
                value = typ(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"{where}: expected a {getattr(typ, '__name__', 'string')}, "
                f"got {type(value).__name__}"
            )
        elif typ is int and isinstance(value, int):
            pass
        elif typ is float:
            value = float(value)
        elif typ is not None and typ is not int and isinstance(value, int):
            value = typ(str(value))
        else:
            raise ConfigError(
                f"{where}: expected a {getattr(typ, '__name__', 'string')}, "
                f"got {type(value).__name__}"
            )
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: invalid value {str(value)[:60]!r}: {exc}") from None
    if a.choices is not None and value not in a.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {sorted(map(str, a.choices))}")
    return value


def _convert(opt: _Opt, value: Any, where: str, *, from_text: bool) -> Any:
    """Turn a file or env value into what argparse would have produced for this option."""
    if opt.kind == "bool":
        if from_text:
            val = parse_bool(str(value), where=where)
        elif isinstance(value, bool):
            val = value
        else:
            raise ConfigError(f"{where}: expected a boolean, got {type(value).__name__}")
        # store_false flags store False when *given*; the file says what the option *is*.
        return val
    if opt.kind == "list":
        if from_text:
            items: list[Any] = [s.strip() for s in str(value).split(",") if s.strip()]
        elif isinstance(value, list):
            items = value
        else:
            raise ConfigError(f"{where}: expected an array")
        return [_convert_one(opt, v, where, from_text) for v in items]
    return _convert_one(opt, value, where, from_text)


def load_toml(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Typed values from a TOML file; unknown keys and wrong types raise ConfigError."""
    p = Path(path)
    tomllib = _tomllib()
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {p}: {exc.strerror}") from None
    table = option_table(parser)
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in table or dest == "config":
            raise ConfigError(f"config file {p}: unknown key '{escape(key, 80)}'")
        if dest in out:
            raise ConfigError(f"config file {p}: key '{key}' is given twice ('-' and '_' forms)")
        out[dest] = _convert(table[dest], value, f"config file {p}: key '{key}'", from_text=False)
    return out


def _read_value_file(path: str, var: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{var}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(f"{var}: {path} is larger than {MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{var}: {path} is not UTF-8") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def read_env(
    parser: argparse.ArgumentParser, prog: str, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Typed values from ``NOPORTS_*`` variables (and ``*_FILE`` variants)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for dest, opt in option_table(parser).items():
        for name in env_names(prog, dest):
            direct, via_file = env.get(name), env.get(name + "_FILE")
            if direct is not None and via_file is not None:
                raise ConfigError(f"both {name} and {name}_FILE are set; use one")
            if direct is None and via_file is None:
                continue
            text = (
                direct if direct is not None else _read_value_file(via_file or "", name + "_FILE")
            )
            out[dest] = _convert(opt, text, f"environment variable {name}", from_text=True)
            break  # the most specific name wins
    return out


class ConfigLayers(Record):
    """Where each default came from; used by ``verify`` subcommands and tests."""

    __slots__ = ("file", "env", "config_path")
    file: dict[str, Any]
    env: dict[str, Any]
    config_path: str | None

    def __init__(
        self,
        file: dict[str, Any] | None = None,
        env: dict[str, Any] | None = None,
        config_path: str | None = None,
    ) -> None:
        self.file = {} if file is None else file
        self.env = {} if env is None else env
        self.config_path = config_path

    def merged(self) -> dict[str, Any]:
        return {**self.file, **self.env}

    def source(self, dest: str) -> str:
        if dest in self.env:
            return "env"
        if dest in self.file:
            return f"file {self.config_path}"
        return "default"


def _columns() -> int:
    """``shutil.get_terminal_size().columns`` (COLUMNS, the terminal, else 80)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class RawFormatter(argparse.RawDescriptionHelpFormatter):
    """``argparse.RawDescriptionHelpFormatter`` that finds its width without ``shutil``
    (which imports bz2, lzma and fnmatch: ~3 ms at every start, as ``add_argument`` makes a
    formatter)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _columns() - 2 if width is None else width
        )


def _config_path(
    argv: Sequence[str],
    prog: str,
    env: Mapping[str, str],
    default: str | None,
    config_env: Sequence[str] = (),
) -> str | None:
    pre = argparse.ArgumentParser(add_help=False, formatter_class=RawFormatter)
    pre.add_argument("--config", dest="config", default=None)
    known, _ = pre.parse_known_args(list(argv))
    if known.config:
        return str(known.config)
    for name in (*env_names(prog, "config"), *config_env):
        if env.get(name):
            return env[name]
    if default and os.path.exists(default):
        return default
    return None


def layers(
    parser: argparse.ArgumentParser,
    prog: str,
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    default_config: str | None = None,
    yaml_keys: Mapping[str, str] | None = None,
    config_env: Sequence[str] = (),
) -> ConfigLayers:
    """Read the file and environment layers for ``parser`` (without parsing argv fully).

    The file comes from ``--config PATH`` in argv, else ``NOPORTS_<PROG>_CONFIG`` (or a name
    in ``config_env``), else ``default_config`` if that file exists. A ``.toml`` file is
    TOML; any other is the official YAML schema ``yaml_keys`` when the program has one.
    """
    env = os.environ if environ is None else environ
    path = _config_path(argv if argv is not None else [], prog, env, default_config, config_env)
    file_values: dict[str, Any] = {}
    if path and yaml_keys is not None and not path.lower().endswith(".toml"):
        file_values = load_yaml(path, parser, yaml_keys)
    elif path:
        file_values = load_toml(path, parser)
    return ConfigLayers(file_values, read_env(parser, prog, env), path)


def parse_args(
    parser: argparse.ArgumentParser,
    prog: str,
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    default_config: str | None = None,
    file_values: Mapping[str, Any] | None = None,
    yaml_keys: Mapping[str, str] | None = None,
    config_env: Sequence[str] = (),
) -> argparse.Namespace:
    """``parser.parse_args`` with env and file defaults filled in (CLI > env > file).

    ``file_values`` (e.g. from :func:`load_env_file`, an sshnp profile) join the file layer,
    over the TOML file's values and under the environment.

    Adds ``--config`` if the parser lacks it. A ``required=True`` option satisfied by the
    environment or the file is no longer required on the command line. ConfigError from the
    layers is reported through ``parser.error`` (exit 2, usage on stderr).
    """
    args = drop_empty(list(argv) if argv is not None else sys.argv[1:], parser)
    if "config" not in {a.dest for a in parser._actions}:  # noqa: SLF001
        parser.add_argument(
            "--config",
            metavar="PATH",
            default=None,
            help=f"TOML config file (env {env_names(prog, 'config')[0]})",
        )
    try:
        found = layers(
            parser,
            prog,
            args,
            environ=environ,
            default_config=default_config,
            yaml_keys=yaml_keys,
            config_env=config_env,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    if file_values:
        found.file.update(file_values)
    merged = found.merged()
    table = option_table(parser)
    lists = {d: table[d].action.default for d in merged if table[d].kind == "list"}
    for dest in merged:
        table[dest].action.required = False
    # append/nargs options would *add* CLI values to a list default; keep CLI > env instead
    parser.set_defaults(**{d: v for d, v in merged.items() if d not in lists})
    ns = parser.parse_args(args)
    for dest, original in lists.items():
        if getattr(ns, dest, None) == original:
            setattr(ns, dest, merged[dest])
    ns.config = found.config_path
    return ns


def drop_empty(argv: list[str], parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Drop empty arguments that are not an option's value.

    The official sshnpd systemd unit passes ``"$delegate_policy"`` quoted, i.e. an empty
    argument when no policy is set; the official parser ignores it, and so do we. An empty
    value right after an option that takes one (``--permit-open ""``) is kept.
    """
    takes_value = {
        s
        for a in (parser._actions if parser is not None else [])  # noqa: SLF001
        if a.nargs != 0
        for s in a.option_strings
    }
    out: list[str] = []
    for i, a in enumerate(argv):
        if a == "" and not (i > 0 and argv[i - 1] in takes_value):
            continue
        out.append(a)
    return out


# --------------------------------------------------------------- official YAML config
def load_yaml(
    path: str | os.PathLike[str], parser: argparse.ArgumentParser, keys: Mapping[str, str]
) -> dict[str, Any]:
    """Typed values from an official-schema YAML config (sshnpd.yaml), keyed by ``dest``.

    ``keys`` maps a YAML path (``/atsign/keys``) to a ``dest``. Lists may be YAML sequences or
    comma strings; for a single-value option a sequence is joined with ``,`` (as official).
    Empty values count as absent. An unknown key is a ConfigError naming the key and its line.
    """
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        raise ConfigError(f"config file {path}: reading YAML needs PyYAML") from None
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p}: {' '.join(str(exc).split())}") from None
    if root is None:
        return {}
    table = option_table(parser)
    prefixes = {k.rsplit("/", i)[0] for k in keys for i in range(1, k.count("/"))}
    out: dict[str, Any] = {}

    def where(node: Any, key: str) -> str:
        return f"config file {p} line {node.start_mark.line + 1}: key '{escape(key, 80)}'"

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"config file {p} line {node.start_mark.line + 1}: expected a map")
        for knode, vnode in node.value:
            name = f"{prefix}/{knode.value}"
            if name in keys:
                value = yaml.SafeLoader("").construct_object(vnode, deep=True)
                dest = keys[name]
                if dest in out:
                    raise ConfigError(f"{where(knode, name[1:])} is given twice")
                conv = _yaml_value(table[dest], value, where(knode, name[1:].replace("/", ".")))
                if conv is not None:
                    out[dest] = conv
            elif name in prefixes:
                if not isinstance(vnode, yaml.ScalarNode) or vnode.value not in ("", "~", "null"):
                    walk(vnode, name)
            else:
                raise ConfigError(f"{where(knode, name[1:].replace('/', '.'))} is unknown")

    walk(root, "")
    return out


def _yaml_value(opt: _Opt, value: Any, where: str) -> Any:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        items = [str(v).strip() for v in value if v is not None and str(v).strip()]
        if not items:
            return None
        if opt.kind == "list":
            return [_convert_one(opt, v, where, True) for v in items]
        value = ",".join(items)
    if opt.kind == "bool":
        if isinstance(value, bool):
            return value
        return parse_bool(str(value), where=where)
    if isinstance(value, (dict, bool)):
        raise ConfigError(f"{where}: expected a value, got {type(value).__name__}")
    if opt.kind == "list":
        return [_convert_one(opt, str(value), where, True)]
    return _convert_one(opt, str(value), where, True)


# --------------------------------------------------------------- official env-style files
def parse_env_file(text: str, *, path: str = "<config>") -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines. ``#`` starts a comment line; blank lines are skipped.

    Keys are upper-case ``[A-Z][A-Z0-9_]*``; the value is everything after the first ``=``
    (surrounding whitespace stripped), so ``=`` inside values survives. Anything else, and a
    key given twice, is a ConfigError naming the line.
    """
    out: dict[str, str] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{no}: expected KEY=VALUE")
        key, value = line.split("=", 1)
        key = key.strip()
        if _ENV_KEY_RE.fullmatch(key) is None:
            raise ConfigError(f"{path}:{no}: invalid key {key[:40]!r} (want UPPER_CASE)")
        if any(ord(c) < 0x20 and c != "\t" for c in value):
            raise ConfigError(f"{path}:{no}: control character in value")
        if key in out:
            raise ConfigError(f"{path}:{no}: {key} is given twice")
        out[key] = value.strip()
    return out


def load_env_file(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Typed defaults from an sshnp profile file, keyed by ``dest``.

    The key for ``--local-port`` is ``LOCAL_PORT``. Switches are true iff the value is
    ``true`` (any case), as official; list options are comma separated, empty values are
    skipped. Unknown keys (``PROFILE_NAME``, keys of newer versions) are ignored with a debug
    line, as the official reader ignores them. Pass the result to :func:`parse_args` as
    ``file_values`` so the environment and the command line still win.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8") from None
    raw = parse_env_file(text, path=str(p))
    by_key: dict[str, _Opt] = {}
    for opt in option_table(parser).values():
        for s in opt.action.option_strings:
            if s.startswith("--") and not s.startswith("--no-"):
                by_key.setdefault(s[2:].upper().replace("-", "_"), opt)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        found = by_key.get(key)
        if found is None:  # the official reader ignores keys it does not know (PROFILE_NAME...)
            _log.debug("%s: ignoring unknown key %s", p, key)
            continue
        opt = found
        where = f"{p}: {key}"
        if opt.kind == "bool":
            out[opt.dest] = value.lower() == "true"
        elif value == "":
            continue  # the official reader skips empty values
        else:
            out[opt.dest] = _convert(opt, value, where, from_text=True)
    return out
