"""``python -m engine`` is the ``ozbulk`` command."""

from engine.cli import run

run()
