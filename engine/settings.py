"""Run settings: frozen, validated on construction, with messages that say the fix."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from engine.errors import UsageError
from engine.rates import UNIT_WORDS, Rate, per_second_text
from engine.redact import REDACTOR, redact_url

DEFAULT_BASE_URL = "https://in1-ccaas-api.ozonetel.com"
DEFAULT_PATH = "/ca_apis/deleteBlockNumberGroup"
TOKEN_PATH = "/ca_apis/CAToken/generateToken"
MAX_BATCH = 100
# Rows read between two producer states stored for a resume, at first (see engine.batcher).
STATE_EVERY_ROWS = 1_000_000
# No rate is published for this call, and other CloudAgent calls allow anything from 2 to 50 a
# minute: any fixed default is either far too slow or refused. So by default the pacer starts
# slowly (5 requests/s), grows until the server refuses, and learns the quota and its window.
DEFAULT_RATE = "auto"
DEFAULT_CONCURRENCY = 16
DEFAULT_COUNTRY = "IN"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 30.0
DEFAULT_TOKEN_TTL = 3600.0
DEFAULT_TOKEN_BUDGET = 10
DEFAULT_BREAKER_WINDOW = 20
DEFAULT_BREAKER_RATIO = 0.8
# A verdict for 100 numbers is a few KB; a megabyte is generous, and 16 workers reading one each
# stay far from any memory limit whatever a broken or hostile server sends.
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
MIN_RESPONSE_BYTES = 1024

AuthMode = Literal["apikey", "token"]
NumberFormat = Literal["digits", "e164", "national"]
AUTH_MODES: tuple[AuthMode, ...] = ("apikey", "token")
NUMBER_FORMATS: tuple[NumberFormat, ...] = ("digits", "e164", "national")


class Secret:
    """A credential that never shows itself in a repr, a log line or an f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        # Wherever a key comes from, the one redactor masks it from here on.
        REDACTOR.add(value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


def _fail(message: str) -> None:
    raise UsageError(message)


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class InputSettings:
    """What decides the chunks: change any of these and a checkpoint no longer fits."""

    paths: tuple[str, ...]
    column: str | None = None
    country: str = DEFAULT_COUNTRY
    number_format: NumberFormat = "digits"
    batch_size: int = MAX_BATCH

    def __post_init__(self) -> None:
        if not self.paths:
            _fail("no input: give one or more CSV files (or - for standard input)")
        if not 1 <= self.batch_size <= MAX_BATCH:
            _fail(
                f"--batch-size must be between 1 and {MAX_BATCH} (got {self.batch_size}); "
                f"the API takes at most {MAX_BATCH} numbers a request"
            )
        if self.number_format not in NUMBER_FORMATS:
            _fail(f"--number-format must be one of {', '.join(NUMBER_FORMATS)}")
        if len(self.country) != 2 or not self.country.isalpha():
            _fail(f"--country must be a two-letter region code such as IN (got {self.country!r})")
        if self.column is not None and not self.column.strip():
            _fail("--column must be a header name or a 1-based index, not empty")

    @property
    def from_stdin(self) -> bool:
        return "-" in self.paths


@dataclass(frozen=True)
class RunSettings:
    """Everything one `ozbulk delete` run needs, validated before anything is sent."""

    inputs: InputSettings
    group_id: int
    user: str
    api_key: Secret = field(repr=False)
    checkpoint: Path
    auth: AuthMode = "apikey"
    base_url: str = DEFAULT_BASE_URL
    path: str = DEFAULT_PATH
    rate: float | None = None  # requests/s ceiling; None = unlimited
    # With no ceiling: grow from 5/s until the server refuses (False: unlimited until then).
    rate_auto: bool = True
    rate_per: float = 1.0  # the unit --rate was given in (60: per minute), for display
    concurrency: int = DEFAULT_CONCURRENCY
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    token_ttl: float = DEFAULT_TOKEN_TTL
    token_budget: int = DEFAULT_TOKEN_BUDGET
    breaker_window: int = DEFAULT_BREAKER_WINDOW
    breaker_ratio: float = DEFAULT_BREAKER_RATIO
    allow_insecure_http: bool = False
    retry_failed: bool = False
    # Go on when none of the first numbers sent was in the group (see engine.guard).
    allow_not_found: bool = False
    summary_json: Path | None = None
    report_dir: Path | None = None
    commit_interval: float = 0.2
    producer_process: bool = True
    # Rows between the producer states stored for a resume (the gap then grows with the input).
    producer_state_rows: int = STATE_EVERY_ROWS
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @property
    def pace_text(self) -> str:
        """--rate as the user wrote it, which the command line reads back: auto, 0, 300/min."""
        if self.rate is not None:
            return str(Rate(self.rate * self.rate_per, self.rate_per))
        return "auto" if self.rate_auto else "0"

    @property
    def pace_shown(self) -> str:
        """--rate as ``config show`` spells it: ``300/min (5/s)``, ``auto``, ``0 (no limit)``."""
        if self.rate is None:
            return "auto" if self.rate_auto else "0 (no limit)"
        per_second = "" if self.rate_per == 1.0 else f" ({per_second_text(self.rate)})"
        return self.pace_text + per_second

    @property
    def pace_words(self) -> str:
        """--rate for people: ``300 a minute (5/s)``, ``auto (...)``, ``unlimited``."""
        if self.rate is not None:
            return f"at most {Rate(self.rate * self.rate_per, self.rate_per).describe()}"
        if self.rate_auto:
            return "auto: from 5/s up until the server refuses, then its learned limit"
        return "unlimited until the server refuses, then its learned limit"

    def __post_init__(self) -> None:
        REDACTOR.add_url(self.base_url)  # first: the messages below may quote the URL
        if self.group_id < 0:
            _fail(f"--group-id must be a positive number (got {self.group_id})")
        if not self.user.strip():
            _fail("--user is required: the CloudAgent account user name")
        if self.auth not in AUTH_MODES:
            _fail(f"--auth must be apikey or token (got {self.auth!r})")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            _fail(f"--base-url must look like https://host (got {redact_url(self.base_url)!r})")
        remote_http = parts.scheme == "http" and not is_loopback_url(self.base_url)
        if remote_http and not self.allow_insecure_http:
            _fail(
                f"--base-url {redact_url(self.base_url)} is plain http to a remote host: the API "
                "key would cross the network unencrypted; use https, or pass "
                "--allow-insecure-http if you really mean it"
            )
        if parts.password is not None and self.auth == "token":
            _fail(
                "--base-url carries a user:password, which is sent as an Authorization header, "
                "and --auth token sends its token in that same header; drop one of them"
            )
        if not self.path.startswith("/"):
            _fail(f"--path must start with / (got {self.path!r})")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            _fail(
                f"--rate must be > 0 (got {self.rate}); use --rate 30/min for one request every "
                "2 s, --rate 0 for no limit, or --rate auto"
            )
        if self.rate_per not in UNIT_WORDS:
            _fail(f"--rate's unit must be a second, a minute or an hour (got {self.rate_per} s)")
        if not 1 <= self.concurrency <= 1024:
            _fail(f"--concurrency must be between 1 and 1024 (got {self.concurrency})")
        for name, value in (
            ("--connect-timeout", self.connect_timeout),
            ("--read-timeout", self.read_timeout),
            ("--token-ttl", self.token_ttl),
            ("--backoff-cap", self.backoff_cap),
        ):
            if not value > 0:
                _fail(f"{name} must be > 0 seconds (got {value})")
        if self.backoff_base < 0:
            _fail(f"--backoff-base must be >= 0 seconds (got {self.backoff_base})")
        if self.max_attempts < 1:
            _fail(f"--max-attempts must be at least 1 (got {self.max_attempts})")
        if self.token_budget < 1:
            _fail(f"--token-budget must be at least 1 (got {self.token_budget})")
        if self.max_response_bytes < MIN_RESPONSE_BYTES:
            _fail(
                f"--max-response-bytes must be at least {MIN_RESPONSE_BYTES} (got "
                f"{self.max_response_bytes}); a verdict for 100 numbers takes a few KB"
            )
        if self.producer_state_rows < 1:
            _fail(f"--producer-state-rows must be at least 1 (got {self.producer_state_rows})")
        if self.breaker_window < 1 or not 0 < self.breaker_ratio <= 1:
            _fail(
                "the circuit breaker needs --breaker-window >= 1 and 0 < --breaker-ratio <= 1 "
                f"(got {self.breaker_window} and {self.breaker_ratio})"
            )

    def require_api_key(self) -> None:
        """Checked before anything is sent; a dry run or `config show` needs no key."""
        if not self.api_key:
            _fail(
                "no API key: set OZONETEL_API_KEY, pass --api-key-file PATH, or pass --api-key "
                "(visible to other users in the process list)"
            )

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    @property
    def token_url(self) -> str:
        return self.base_url.rstrip("/") + TOKEN_PATH

    @property
    def host(self) -> str:
        return urlsplit(redact_url(self.base_url)).netloc

    @property
    def base_url_shown(self) -> str:
        """``--base-url`` as plans, checkpoints and `status` show it: no password."""
        return redact_url(self.base_url)
