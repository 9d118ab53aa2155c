"""Settings from three places besides the command line, with one precedence rule.

flags > environment (``OZBULK_<OPTION>``, e.g. ``OZBULK_RATE=5``) > TOML file (``--config``) >
defaults. The file takes the long option names, with dashes or underscores, at the top level or
under a ``[delete]`` table::

    user = "acme"
    group-id = 42
    rate = 5
    api-key-file = "~/.ozonetel-key"
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import UsageError

ENV_PREFIX = "OZBULK_"
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")
# Options that make no sense outside one command line.
NOT_LAYERED = frozenset({"help", "config", "command", "config_command"})


def load_file(path: Path) -> dict[str, Any]:
    import tomllib  # here: a run without --config does not compile the TOML parser's patterns

    try:
        with path.expanduser().open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise UsageError(f"--config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"--config {path}: not valid TOML ({error})") from None
    section = data.pop("delete", {})
    if not isinstance(section, dict):
        raise UsageError(f"--config {path}: [delete] must be a table")
    merged = {**data, **section}
    return {key.replace("-", "_"): value for key, value in merged.items()}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    flag = action.option_strings[-1] if action.option_strings else action.dest
    if action.nargs == 0:  # a switch such as --yes
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE or text in FALSE:
            return text in TRUE
        raise UsageError(f"{where}: {flag} takes true or false (got {value!r})")
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else str(value).split()
        return [str(item) for item in items]
    if isinstance(value, str) and action.type is not None and callable(action.type):
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise UsageError(f"{where}: {flag}: {error}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{where}: {flag} must be one of {choices} (got {value!r})")
    return value


def given_on_command_line(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(
        token == option or token.startswith(option + "=")
        for token in argv
        for option in action.option_strings
    )


def layer_defaults(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    file: Path | None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """Install file and environment values as the parser's defaults; return each one's source."""
    values = load_file(file) if file is not None else {}
    actions = {action.dest: action for action in parser._actions if action.dest not in NOT_LAYERED}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        known = ", ".join(sorted(name.replace("_", "-") for name in actions))
        raise UsageError(
            f"--config {file}: unknown setting(s) {', '.join(unknown)}; known: {known}"
        )
    sources: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    for dest, action in actions.items():
        env_name = ENV_PREFIX + dest.upper()
        if env_name in environ:
            defaults[dest] = _convert(action, environ[env_name], env_name)
            sources[dest] = f"environment {env_name}"
        elif dest in values:
            defaults[dest] = _convert(action, values[dest], f"--config {file}")
            sources[dest] = f"file {file}"
        if given_on_command_line(action, argv):
            sources[dest] = "flag"
    parser.set_defaults(**defaults)
    return sources


def config_path(argv: Sequence[str]) -> Path | None:
    """Find --config before the real parse, since it decides the defaults of that parse."""
    for index, token in enumerate(argv):
        if token == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if token.startswith("--config="):
            return Path(token.split("=", 1)[1])
    return None
