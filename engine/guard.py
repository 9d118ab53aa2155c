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

from engine.errors import NothingDeleted

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
