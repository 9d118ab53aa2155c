"""The guard against a run that deletes nothing.

If the numbers are sent in a form the account does not store, or to the wrong group or user,
every answer is a success with ``deleted: 0``: a ten-hour run would end "complete" having done
nothing. So when none of the first :data:`GUARD_NUMBERS` numbers sent was in the group, the run
stops (exit 3) and says what to check. ``--allow-not-found`` lets a deliberate second clean-up
go on.

The decision is kept in the checkpoint (with the run's counters), so a resume keeps it: a run
that found numbers is never stopped later because its remaining numbers are gone; a run stopped
by the guard stops again at once, before sending anything, unless ``--allow-not-found`` is given.
"""

from __future__ import annotations

from engine.errors import ApiError, NoApiThere, NotAVerdict, NothingDeleted, TransportError

GUARD_NUMBERS = 2000
COUNTER_KEY = "not_found_guard"

PASSED = "passed"  # a number was found in the group: nothing more to check
ALLOWED = "allowed"  # --allow-not-found: never stop for this
TRIPPED = "tripped"  # stopped: none of the first numbers was in the group


class NotFoundGuard:
    """Watches the verdicts until one deletes something, or enough numbers were not found."""

    def __init__(
        self,
        decision: str | None,
        *,
        allow: bool,
        deleted_before: int = 0,
        group_id: int | None = None,
        number_example: str = "",
        limit: int = GUARD_NUMBERS,
    ) -> None:
        if decision not in (PASSED, ALLOWED, TRIPPED):
            decision = PASSED if deleted_before else None
        if allow and decision != PASSED:
            decision = ALLOWED
        self.decision = decision
        self.not_found = 0
        self._limit = limit
        self._group_id = group_id
        self._example = number_example

    def check_start(self) -> None:
        """Before a resume sends anything: an earlier pass stopped by the guard stops again."""
        if self.decision == TRIPPED:
            raise self._error(resumed=True)

    def record(self, sent: int, deleted: int, error: int, *, in_doubt: bool) -> None:
        """One chunk's verdict. A chunk in doubt may have been deleted earlier: it proves
        nothing either way."""
        if self.decision is not None or in_doubt:
            return
        if deleted > 0:
            self.decision = PASSED
            return
        self.not_found += sent - error
        if self.not_found >= self._limit:
            self.decision = TRIPPED
            raise self._error(resumed=False)

    def _error(self, *, resumed: bool) -> NothingDeleted:
        group = f"group {self._group_id}" if self._group_id is not None else "the group"
        what = (
            "an earlier pass of this run stopped because none of the first numbers it sent was"
            if resumed
            else f"none of the first {self.not_found:,} numbers sent was"
        )
        example = f"; numbers were sent as {self._example}" if self._example else ""
        return NothingDeleted(
            f"stopped: {what} in {group} (every answer said deleted 0), so this run would "
            f"delete nothing. Check --number-format (the form the account stores{example}), "
            "--group-id and --user. If the numbers were deliberately removed already, re-run "
            "with --allow-not-found"
        )


# -- first contact: is there an Ozonetel API at the other end at all? ------------------------

NO_API_ATTEMPTS = 6


class FirstContact:
    """Until the first verdict, a few attempts that found no API stop the run.

    No connection, no such host, or a page that is not a JSON verdict with a status below 500
    (a proxy's or a captive portal's page, another web site at a wrong --base-url): none of
    these fixes itself, so retrying every chunk eight times and ending with "re-run the same
    command" sends the operator the wrong way. 5xx answers stay with the retries and the circuit
    breaker: a server that is briefly down does come back. After the first verdict this never
    stops anything.
    """

    def __init__(self, url: str, limit: int = NO_API_ATTEMPTS) -> None:
        self.url = url
        self.reached = False
        self.failures = 0
        self._limit = limit

    def succeeded(self) -> None:
        self.reached = True

    def failed(self, error: ApiError) -> None:
        if self.reached or not _shows_no_api(error):
            return
        self.failures += 1
        if self.failures >= self._limit:
            raise NoApiThere(
                f"stopped: {self.failures} requests to {self.url} found no Ozonetel API there "
                f"(the last: {error}). A wrong --base-url or --path, a proxy or a captive portal "
                "does not fix itself: check them and that the host is reachable, then re-run "
                "the same command (nothing was deleted by these requests)"
            )


def _shows_no_api(error: ApiError) -> bool:
    if isinstance(error, TransportError):
        return str(error).startswith(("cannot connect to", "cannot resolve"))
    if isinstance(error, NotAVerdict):
        return error.http_status is not None and error.http_status < 500
    return False
