"""The one redactor: every secret ozbulk knows is masked in all it prints, logs and writes.

The secrets are the API key, every token generated in this process, and a password given in
``--base-url`` (``https://user:pass@host``). They can reach an output by routes no code here
chooses: the server echoes a key in an error message, a proxy's 500 page quotes the request's
headers. So text is masked twice: where the server's words enter the engine (the client builds
its errors and snippets through :meth:`Redactor.scrub`), and at every sink as a backstop (log
handlers, the streams the CLI prints to, checkpoint rows, report files, the summary).

A secret is also masked in the forms a server is likely to echo it in: percent-encoded, JSON
escaped, and, for a URL's credentials, the ``Authorization: Basic`` value aiohttp sends for them.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, TextIO
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"
# Masking a one-letter "secret" would mangle every message and protect nothing.
MIN_SECRET_LENGTH = 4


class Redactor:
    """Knows the run's secrets and masks each of them in any text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.longest = 0

    def add(self, secret: str) -> None:
        """Remember a secret, and the forms it takes when a server echoes it."""
        if len(secret) < MIN_SECRET_LENGTH:
            return
        forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
        new = forms - self._secrets
        if new:
            self._secrets |= new
            # Longest first, so that a secret containing another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))
            self.longest = len(ordered[0])

    def add_url(self, url: str) -> None:
        """Remember the password in a URL's ``user:password@``, if it has one."""
        parts = urlsplit(url)
        if parts.password is None:
            return
        password = unquote(parts.password)
        self.add(password)
        self.add(parts.password)
        user = unquote(parts.username or "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.add(basic)

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced by ``***``."""
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def scrub_value(self, value: Any) -> Any:
        """A JSON-like value (dict, list, str, number) with every string scrubbed."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {key: self.scrub_value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub_value(item) for item in value]
        return value

    def forget_all(self) -> None:
        """For tests only: start again with no secret known."""
        self._secrets.clear()
        self._pattern = None
        self.longest = 0


REDACTOR = Redactor()


def redact_url(url: str) -> str:
    """The URL with the password of a ``user:password@`` part shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


def snippet(raw: bytes, length: int) -> str:
    """The start of a server's answer for a message: secrets masked, then cut to ``length``.

    Masking first over a window that also holds the longest secret: a cut made first could
    leave the first half of a secret that no longer matches anything.
    """
    cut = length + REDACTOR.longest
    window = raw[:cut].decode("utf-8", errors="replace")
    text = " ".join(REDACTOR.scrub(window).split())
    return text[:length] + ("…" if len(text) > length or len(raw) > cut else "")


class RedactingStream:
    """A text stream (stdout, stderr) that masks secrets in everything written to it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(REDACTOR.scrub(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        # isatty, flush, fileno, encoding...: the real stream answers.
        return getattr(self._stream, name)
