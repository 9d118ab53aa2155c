"""The real CLI against the real fake API over loopback: the foundation's promises."""

from __future__ import annotations

import json

from engine.batcher import accepted_numbers
from tests._helpers import GROUP, delete_args


def test_twenty_thousand_numbers_all_deleted_and_totals_add_up(run_cli, fake_api, sample_csv):
    """A 20,000-row run deletes every accepted number; rows = accepted + rejected + duplicates."""
    server = fake_api()
    source = sample_csv(20_000)
    seeded = server.state.seed(GROUP, accepted_numbers((str(source),)))
    result = run_cli(*delete_args(server, source, rate=0, concurrency=16, summary_json="s.json"))
    assert result.returncode == 0, result.output
    summary = json.loads((source.parent / "s.json").read_text())
    assert summary["rows"] == 20_000
    assert summary["rows"] == summary["accepted"] + summary["rejected"] + summary["duplicates"]
    assert summary["accepted"] == seeded
    assert summary["deleted"] == seeded
    assert summary["complete"] is True
    assert server.state.remaining(GROUP) == 0
    stats = server.stats()
    assert stats["max_batch_seen"] <= 100
    assert stats["bodyless_requests"] == 0
