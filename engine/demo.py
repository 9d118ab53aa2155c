"""``ozbulk demo``: the whole job end to end, against the embedded fake API, in one command."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from engine.batcher import accepted_numbers
from engine.mock import MockConfig, ThreadedMockServer
from engine.pipeline import delete
from engine.progress import LogDisplay
from engine.sample import write_sample_file
from engine.settings import InputSettings, RunSettings, Secret
from engine.summary import print_summary

DEMO_KEY = "demo-key"
SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "sample.csv"


def run_demo(rows: int = 0) -> int:
    with tempfile.TemporaryDirectory(prefix="ozbulk-demo-") as folder:
        work = Path(folder)
        if rows or not SAMPLE.is_file():
            source = work / "sample.csv"
            write_sample_file(source, rows or 2000)
        else:
            source = SAMPLE
        inputs = InputSettings(paths=(str(source),))
        numbers = list(accepted_numbers(inputs.paths))
        config = MockConfig(user="demo", api_key=DEMO_KEY, group_id=1)
        with ThreadedMockServer(config) as server:
            server.state.seed(1, numbers)
            held = server.state.remaining(1)
            print(f"fake Ozonetel API at {server.url}: group 1 holds {held} numbers")
            print(f"deleting the numbers in {source} ...")
            settings = RunSettings(
                inputs=inputs,
                group_id=1,
                user="demo",
                api_key=Secret(DEMO_KEY),
                checkpoint=work / "demo.ckpt",
                base_url=server.url,
                rate=None,
                concurrency=16,
            )
            outcome = anyio.run(lambda: delete(settings, progress=LogDisplay(interval=1.0)))
            print_summary(outcome.result, paths=False)  # the folder is removed when the demo ends
            left = server.state.remaining(1)
            verdict = "all deleted" if left == 0 else "NOT all deleted"
            print(f"fake API: group 1 now holds {left} numbers ({verdict})")
        return outcome.exit_code if left == 0 else 1
