"""The API's refusals in its own words: the one table of the messages ozbulk recognises.

Ozonetel answers most refusals with HTTP 200 and a ``message`` that names them; Delete
(:func:`engine.client.classify`) and Generate Token (:class:`engine.auth.TokenAuth`) both read
the kind of refusal from it here, so a new wording is added in one place for both.
"""

from __future__ import annotations

import enum


class Refusal(enum.Enum):
    """What a message of the server's says went wrong."""

    RATE_LIMITED = "rate_limited"
    TOKEN = "token"
    CREDENTIALS = "credentials"
    GROUP = "group"
    REQUEST_SHAPE = "request_shape"


# In the order they are tried: a message naming two kinds is the first one's (a rate limit
# wins over all, as it is the one a retry cures).
MESSAGES: tuple[tuple[Refusal, tuple[str, ...]], ...] = (
    (Refusal.RATE_LIMITED, ("max limit exceeded", "rate limit", "too many requests")),
    (Refusal.TOKEN, ("token expired", "invalid token", "token should not be null")),
    (Refusal.CREDENTIALS, ("invalid username or apikey", "username is null", "unauthori")),
    (Refusal.GROUP, ("invalid group id",)),
    (Refusal.REQUEST_SHAPE, ("parameters are mandatory", "maximum")),
)


def refusal_in(message: str) -> Refusal | None:
    """The kind of refusal ``message`` states (any case), or None if it states none known."""
    lowered = message.lower()
    for refusal, texts in MESSAGES:
        if any(text in lowered for text in texts):
            return refusal
    return None
