"""The fake Ozonetel account: groups, tokens, rate window, faults and stats, with no HTTP in sight.

Every verdict the real API gives is decided here, synchronously, so it can be unit-tested with a
fake clock; `server.py` only maps these decisions onto HTTP. Each public method of `MockState`
takes one lock, because `ThreadedMockServer` lets a test thread seed and read the state while the
server thread mutates it.
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from engine.mock.quota import Quota, QuotaChange
from engine.rates import Rate

JsonObject = dict[str, Any]
AuthMode = Literal["apikey", "token"]
RateLimitStyle = Literal["http", "http-bare", "body"]

TOKEN_PATH: Final = "/ca_apis/CAToken/generateToken"
DELETE_PATH: Final = "/ca_apis/deleteBlockNumberGroup"
DELETE_ALIAS_PATH: Final = "/ca_apis/deleteBlockNumber"
UPDATE_PATH: Final = "/ca_apis/updateBlockNumbers"
CREATE_PATH: Final = "/ca_apis/createBlockNumber"
DELETE_PATHS: Final = frozenset({DELETE_PATH, DELETE_ALIAS_PATH})

DEFAULT_USER: Final = "demo"
DEFAULT_API_KEY: Final = "demo-key"
DEFAULT_GROUP_ID: Final = 1
DEFAULT_GROUP_NAME: Final = "ozbulk-demo"
DEFAULT_TOKEN_TTL: Final = 3600.0
DEFAULT_TOKEN_BUDGET: Final = 10
DEFAULT_MAX_BATCH: Final = 100
DEFAULT_HANG_S: Final = 30.0
TOKEN_BUDGET_WINDOW_S: Final = 3600.0

AUTH_MODES: Final[tuple[AuthMode, ...]] = ("apikey", "token")
RATE_LIMIT_STYLES: Final[tuple[RateLimitStyle, ...]] = ("http", "http-bare", "body")
FAULT_KINDS: Final[tuple[str, ...]] = (
    "http_500",  # JSON error body
    "http_502",  # JSON error body
    "http_503",  # JSON error body
    "html_502",  # a proxy's HTML error page
    "reset",  # TCP reset before any answer; nothing applied
    "hang",  # answers only after hang_s; the client should have timed out by then
    "garbled",  # HTTP 200 with truncated JSON; nothing applied
    "lost_reply",  # deletion applied, then the connection dies before the answer
)
FAIL_ALL_FAULT: Final = "fail_all"

MSG_INVALID_CREDENTIALS: Final = "Invalid userName or apiKey"
MSG_USERNAME_NULL: Final = "UserName is null"
MSG_TOKEN_LIMIT: Final = "Token generation limit exceeded"
MSG_TOKEN_MISSING: Final = "Token Should Not be Null or Empty."
MSG_TOKEN_INVALID: Final = "Invalid Token"
MSG_TOKEN_EXPIRED: Final = "Token Expired"
MSG_PARAMETERS: Final = "Parameters are mandatory"
MSG_INVALID_GROUP: Final = "Invalid group id"
MSG_RATE_LIMITED: Final = "Max limit exceeded"
MSG_GROUP_EXISTS: Final = "Group name already exists"


def _false(message: str) -> JsonObject:
    return {"status": "false", "message": message}


def _error(message: str) -> JsonObject:
    return {"status": "error", "message": message}


RATE_LIMITED_BODY: Final = _error(MSG_RATE_LIMITED)


def canonicalise(raw: object) -> str | None:
    """Return the `+`-prefixed form Ozonetel answers with, or None when the number is invalid."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        raw = str(raw)
    if not isinstance(raw, str):
        return None
    number = "".join(raw.split())
    if number.startswith("+"):
        return number if len(number) > 1 else None
    # str.isdigit alone accepts superscripts and other scripts' digits, which no phone has.
    if not (number.isascii() and number.isdigit()):
        return None
    if len(number) == 10:
        return "+91" + number
    if len(number) == 12 and number.startswith("91"):
        return "+" + number
    if 8 <= len(number) <= 15:
        return "+" + number
    return None


def generate_mobile_numbers(count: int, seed: int = 0) -> list[str]:
    """Return `count` distinct random 10-digit Indian mobile numbers (first digit 6-9), seeded."""
    if count < 0:
        raise ValueError(f"count must be >= 0 (got {count}); use 0 for an empty group")
    rng = random.Random(seed)
    seen: set[int] = set()
    numbers: list[str] = []
    while len(numbers) < count:
        candidate = rng.randrange(6_000_000_000, 10_000_000_000)
        if candidate not in seen:
            seen.add(candidate)
            numbers.append(str(candidate))
    return numbers


@dataclass(frozen=True, slots=True)
class MockConfig:
    """Every knob of the fake API. The defaults behave like a healthy Ozonetel account."""

    user: str = DEFAULT_USER
    api_key: str = field(default=DEFAULT_API_KEY, repr=False)
    auth_mode: AuthMode = "apikey"
    group_id: int = DEFAULT_GROUP_ID
    group_name: str = DEFAULT_GROUP_NAME
    token_ttl: float = DEFAULT_TOKEN_TTL
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_batch: int = DEFAULT_MAX_BATCH
    latency_ms: float = 0.0
    # At most rate_limit requests per rate_limit_window seconds: a sliding window, or a counter
    # reset at each wall-clock boundary of the window (rate_limit_reset); changes apply later.
    rate_limit: float | None = None
    rate_limit_window: float = 1.0
    rate_limit_reset: bool = False
    rate_limit_changes: Sequence[QuotaChange] = ()
    rate_limit_style: RateLimitStyle = "http"
    fault_rate: float = 0.0
    fault_kinds: Sequence[str] = FAULT_KINDS
    fault_seed: int = 0
    hang_s: float = DEFAULT_HANG_S
    fail_all: bool = False

    def __post_init__(self) -> None:
        # A tuple keeps the frozen config hashable and safe from a caller mutating its list.
        object.__setattr__(self, "fault_kinds", tuple(self.fault_kinds))
        object.__setattr__(self, "rate_limit_changes", tuple(self.rate_limit_changes))
        if not self.user:
            raise ValueError("user (--user) must not be empty; use --user demo")
        if not self.api_key:
            raise ValueError("api_key (--api-key) must not be empty; pass any non-empty string")
        if self.auth_mode not in AUTH_MODES:
            raise ValueError(
                f"auth_mode (--auth-mode) must be apikey or token (got {self.auth_mode!r})"
            )
        if isinstance(self.group_id, bool) or self.group_id < 1:
            raise ValueError(
                f"group_id (--group-id) must be an integer >= 1 (got {self.group_id!r}); use 1"
            )
        if not self.group_name:
            raise ValueError("group_name (--group-name) must not be empty; use --group-name demo")
        _require_positive("token_ttl (--token-ttl)", self.token_ttl, "use 3600 for Ozonetel's hour")
        if self.token_budget < 1:
            raise ValueError(
                f"token_budget (--token-budget) must be >= 1 (got {self.token_budget}); "
                "Ozonetel allows 10 an hour"
            )
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (got {self.max_batch}); Ozonetel's is 100")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(
                f"latency_ms (--latency-ms) must be >= 0 (got {self.latency_ms}); use 0 for none"
            )
        if self.rate_limit is not None:
            _require_positive(
                "rate_limit (--rate-limit)", self.rate_limit, "leave it unset for no limit"
            )
            Rate(self.rate_limit, self.rate_limit_window)  # a window of a second, minute or hour
        elif self.rate_limit_changes:
            raise ValueError("a rate limit change (--rate-limit-change) needs --rate-limit first")
        if self.rate_limit_style not in RATE_LIMIT_STYLES:
            raise ValueError(
                "rate_limit_style (--rate-limit-style) must be http, http-bare or body "
                f"(got {self.rate_limit_style!r})"
            )
        if not (0.0 <= self.fault_rate <= 1.0):
            raise ValueError(
                f"fault_rate (--fault-rate) must be within 0..1 (got {self.fault_rate}); "
                "use 0.05 for one faulty answer in twenty"
            )
        unknown = [kind for kind in self.fault_kinds if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown fault kind(s) {', '.join(map(repr, unknown))} in fault_kinds "
                f"(--fault-kinds); choose from {','.join(FAULT_KINDS)}"
            )
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError(
                "fault_kinds (--fault-kinds) is empty but fault_rate > 0; name at least one kind "
                f"from {','.join(FAULT_KINDS)} or set fault_rate to 0"
            )
        _require_positive("hang_s", self.hang_s, "use 30 to outlast a client's read timeout")


def _require_positive(name: str, value: float, hint: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0 (got {value}); {hint}")


@dataclass(slots=True)
class _Group:
    name: str
    numbers: set[str]


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    requests_by_path: dict[str, int] = field(default_factory=dict)
    delete_requests: int = 0
    numbers_received: int = 0
    numbers_deleted: int = 0
    max_batch_seen: int = 0
    bodyless_requests: int = 0
    oversized_requests: int = 0
    tokens_issued: int = 0
    token_refusals: int = 0
    auth_failures: int = 0
    rate_limited: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    duplicate_batches: int = 0
    # Digest of each successful delete's blockNumbers -> times answered; a 16-byte digest instead
    # of the list itself keeps ten million numbers' worth of batches at a few MB.
    successes_by_batch: dict[bytes, int] = field(default_factory=dict)


class MockState:
    """The account behind the fake API. Synchronous and pure apart from the injected clock."""

    def __init__(
        self,
        config: MockConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[int, _Group] = {config.group_id: _Group(config.group_name, set())}
        self._ids_by_name: dict[str, int] = {config.group_name: config.group_id}
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_issue_times: deque[float] = deque()
        self._quota = (
            None
            if config.rate_limit is None
            else Quota(
                Rate(config.rate_limit, config.rate_limit_window),
                fixed=config.rate_limit_reset,
                changes=config.rate_limit_changes,
                clock=clock,
                wall=wall,
            )
        )
        self._fault_rng = random.Random(config.fault_seed)
        self._counters = _Counters()

    @property
    def config(self) -> MockConfig:
        return self._config

    # -- seeding and inspection (for tests and the CLI, not part of Ozonetel's API) --

    def seed(self, group_id: int, numbers: Iterable[object], name: str | None = None) -> int:
        """Add numbers to a group, creating it if needed; return how many were not there yet.

        Invalid numbers are skipped, so a CSV header row can be passed straight through.
        """
        with self._lock:
            group = self._groups.get(group_id)
            if group is None:
                group_name = name or f"group-{group_id}"
                if group_name in self._ids_by_name:
                    raise ValueError(
                        f"group name {group_name!r} already belongs to group "
                        f"{self._ids_by_name[group_name]}; pass another name"
                    )
                group = self._groups[group_id] = _Group(group_name, set())
                self._ids_by_name[group_name] = group_id
            before = len(group.numbers)
            group.numbers.update(
                canonical for canonical in map(canonicalise, numbers) if canonical is not None
            )
            return len(group.numbers) - before

    def remaining(self, group_id: int) -> int:
        """How many numbers group `group_id` still holds; KeyError if there is no such group."""
        with self._lock:
            return len(self._group(group_id).numbers)

    def numbers(self, group_id: int) -> frozenset[str]:
        """The canonical numbers group `group_id` still holds; KeyError if there is no such one."""
        with self._lock:
            return frozenset(self._group(group_id).numbers)

    def _group(self, group_id: int) -> _Group:
        try:
            return self._groups[group_id]
        except KeyError:
            raise KeyError(f"no group {group_id}; seed() creates one") from None

    def stats(self) -> JsonObject:
        """A snapshot of the counters, safe to keep and to serialise.

        `requests` and `delete_requests` count every API call that arrived, rate-limited ones
        included; the /mock/* endpoints are not counted, so polling them changes nothing.
        `numbers_received` and `max_batch_seen` include oversized batches, so a test can prove
        a client never sent one.
        """
        with self._lock:
            counters = self._counters
            return {
                "requests": counters.requests,
                "requests_by_path": dict(counters.requests_by_path),
                "delete_requests": counters.delete_requests,
                "numbers_received": counters.numbers_received,
                "numbers_deleted": counters.numbers_deleted,
                "max_batch_seen": counters.max_batch_seen,
                "bodyless_requests": counters.bodyless_requests,
                "oversized_requests": counters.oversized_requests,
                "tokens_issued": counters.tokens_issued,
                "token_refusals": counters.token_refusals,
                "auth_failures": counters.auth_failures,
                "rate_limited": counters.rate_limited,
                "faults": dict(counters.faults),
                "duplicate_batches": counters.duplicate_batches,
                "groups": {
                    str(group_id): {"name": group.name, "remaining": len(group.numbers)}
                    for group_id, group in self._groups.items()
                },
            }

    def reset_stats(self) -> None:
        """Zero every counter; groups, tokens, the token budget and the rate window are kept."""
        with self._lock:
            self._counters = _Counters()

    # -- admission: what the server decides before looking at a request's body --

    def admit(self, path: str) -> bool:
        """Count an API request and say whether the rate limit lets it through."""
        with self._lock:
            counters = self._counters
            counters.requests += 1
            counters.requests_by_path[path] = counters.requests_by_path.get(path, 0) + 1
            if path in DELETE_PATHS:
                counters.delete_requests += 1
            if self._quota is None or self._quota.admit():
                return True
            counters.rate_limited += 1
            return False

    def retry_after(self) -> float:
        """Seconds until the rate limit admits the next request (0 without a limit)."""
        with self._lock:
            return 0.0 if self._quota is None else self._quota.retry_after()

    def draw_fault(self) -> str | None:
        """Pick the fault (a FAULT_KINDS name or "fail_all") this delete call suffers, if any."""
        with self._lock:
            config = self._config
            if config.fail_all:
                kind = FAIL_ALL_FAULT
            elif config.fault_rate > 0 and self._fault_rng.random() < config.fault_rate:
                kind = self._fault_rng.choice(config.fault_kinds)
            else:
                return None
            faults = self._counters.faults
            faults[kind] = faults.get(kind, 0) + 1
            return kind

    # -- the API calls; each answers the JSON body of an HTTP 200 --

    def generate_token(self, body: bytes, *, api_key: str | None) -> JsonObject:
        """POST /ca_apis/CAToken/generateToken."""
        with self._lock:
            request = self._parse(body)
            user = request.get("userName") if request is not None else None
            if not user:
                self._counters.auth_failures += 1
                return _false(MSG_USERNAME_NULL)
            if user != self._config.user or api_key != self._config.api_key:
                self._counters.auth_failures += 1
                return _false(MSG_INVALID_CREDENTIALS)
            now = self._clock()
            issued = self._token_issue_times
            while issued and issued[0] <= now - TOKEN_BUDGET_WINDOW_S:
                issued.popleft()
            if len(issued) >= self._config.token_budget:
                self._counters.token_refusals += 1
                return _false(MSG_TOKEN_LIMIT)
            issued.append(now)
            # Keeping only the newest token is what makes every earlier one invalid.
            self._token = secrets.token_urlsafe(32)
            self._token_expires_at = now + self._config.token_ttl
            self._counters.tokens_issued += 1
            return {"token": self._token, "message": ""}

    def delete(
        self, body: bytes, *, api_key: str | None = None, authorization: str | None = None
    ) -> JsonObject:
        """DELETE /ca_apis/deleteBlockNumberGroup (and its alias /ca_apis/deleteBlockNumber)."""
        with self._lock:
            refusal = self._check_credentials(api_key, authorization)
            if refusal is not None:
                return refusal
            request = self._parse(body)
            if request is None:
                return _error(MSG_PARAMETERS)
            if request.get("userName") != self._config.user:
                self._counters.auth_failures += 1
                return _false(MSG_INVALID_CREDENTIALS)
            numbers = request.get("blockNumbers")
            if "id" not in request or not isinstance(numbers, list):
                return _error(MSG_PARAMETERS)
            counters = self._counters
            counters.numbers_received += len(numbers)
            counters.max_batch_seen = max(counters.max_batch_seen, len(numbers))
            oversized = self._refuse_oversized(numbers)
            if oversized is not None:
                return oversized
            group_id = _group_id(request["id"])
            group = None if group_id is None else self._groups.get(group_id)
            if group is None:
                return _error(MSG_INVALID_GROUP)
            held = group.numbers
            success: list[str] = []
            error: list[object] = []
            deleted = 0
            for raw in numbers:
                canonical = canonicalise(raw)
                if canonical is None:
                    error.append(raw)
                    continue
                success.append(canonical)
                if canonical in held:
                    held.remove(canonical)
                    deleted += 1
            counters.numbers_deleted += deleted
            digest = hashlib.blake2b(orjson.dumps(numbers), digest_size=16).digest()
            seen = counters.successes_by_batch.get(digest, 0) + 1
            counters.successes_by_batch[digest] = seen
            if seen == 2:
                counters.duplicate_batches += 1
            return {
                "status": "success",
                "message": "deleted",
                "input": {"id": request["id"], "blockNumbers": numbers},
                "output": {"success": success, "error": error, "deleted": deleted},
            }

    def update(
        self, body: bytes, *, api_key: str | None = None, authorization: str | None = None
    ) -> JsonObject:
        """PUT /ca_apis/updateBlockNumbers: add numbers to the named group, created if need be."""
        with self._lock:
            refusal = self._check_credentials(api_key, authorization)
            if refusal is not None:
                return refusal
            request = self._parse(body)
            if request is None:
                return _error(MSG_PARAMETERS)
            if request.get("userName") != self._config.user:
                self._counters.auth_failures += 1
                return _false(MSG_INVALID_CREDENTIALS)
            name = request.get("groupName")
            numbers = request.get("blockNumbers")
            if not isinstance(name, str) or not name or not isinstance(numbers, list):
                return _error(MSG_PARAMETERS)
            oversized = self._refuse_oversized(numbers)
            if oversized is not None:
                return oversized
            group_id = self._ids_by_name.get(name)
            if group_id is None:
                group_id = self._create_group(name)
            added, success, error = self._add(self._groups[group_id], numbers)
            return {
                "status": "success",
                "message": "Block numbers updated successfully",
                "output": {"succes": success, "error": error, "new": added, "inserted": added},
            }

    def create(
        self, body: bytes, *, api_key: str | None = None, authorization: str | None = None
    ) -> JsonObject:
        """POST /ca_apis/createBlockNumber: a new group, optionally with its first numbers."""
        with self._lock:
            refusal = self._check_credentials(api_key, authorization)
            if refusal is not None:
                return refusal
            request = self._parse(body)
            if request is None:
                return _error(MSG_PARAMETERS)
            if request.get("userName") != self._config.user:
                self._counters.auth_failures += 1
                return _false(MSG_INVALID_CREDENTIALS)
            name = request.get("name")
            numbers = request.get("blockNumbers", [])
            if not isinstance(name, str) or not name or not isinstance(numbers, list):
                return _error(MSG_PARAMETERS)
            if name in self._ids_by_name:
                return _error(MSG_GROUP_EXISTS)
            oversized = self._refuse_oversized(numbers)
            if oversized is not None:
                return oversized
            group_id = self._create_group(name)
            self._add(self._groups[group_id], numbers)
            return {"status": "success", "message": "Created", "id": group_id}

    # -- helpers; the caller holds the lock --

    def _parse(self, body: bytes) -> dict[str, Any] | None:
        if not body.strip():
            self._counters.bodyless_requests += 1
            return None
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return request if isinstance(request, dict) else None

    def _check_credentials(
        self, api_key: str | None, authorization: str | None
    ) -> JsonObject | None:
        if self._config.auth_mode == "apikey":
            if api_key != self._config.api_key:
                self._counters.auth_failures += 1
                return _false(MSG_INVALID_CREDENTIALS)
            return None
        token = _bearer_token(authorization)
        if not token:
            message = MSG_TOKEN_MISSING
        elif token != self._token:
            message = MSG_TOKEN_INVALID
        elif self._clock() >= self._token_expires_at:
            message = MSG_TOKEN_EXPIRED
        else:
            return None
        self._counters.auth_failures += 1
        return _false(message)

    def _refuse_oversized(self, numbers: list[object]) -> JsonObject | None:
        if len(numbers) <= self._config.max_batch:
            return None
        self._counters.oversized_requests += 1
        return _error(f"Maximum {self._config.max_batch} numbers are allowed")

    def _create_group(self, name: str) -> int:
        group_id = max(self._groups, default=0) + 1
        self._groups[group_id] = _Group(name, set())
        self._ids_by_name[name] = group_id
        return group_id

    @staticmethod
    def _add(group: _Group, numbers: list[object]) -> tuple[int, list[str], list[object]]:
        success: list[str] = []
        error: list[object] = []
        added = 0
        for raw in numbers:
            canonical = canonicalise(raw)
            if canonical is None:
                error.append(raw)
                continue
            success.append(canonical)
            if canonical not in group.numbers:
                group.numbers.add(canonical)
                added += 1
        return added, success, error


def _bearer_token(authorization: str | None) -> str:
    if authorization is None:
        return ""
    value = authorization.strip()
    scheme, _, rest = value.partition(" ")
    # Some clients send the bare token; Ozonetel's docs only show "Bearer <token>".
    return rest.strip() if scheme.lower() == "bearer" else value


def _group_id(raw: object) -> int | None:
    """The group id as Ozonetel reads it: a JSON integer, or a string of digits."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return int(raw)
    return None
