"""The per-stage profile (`dcounter-bench --stages`): its table and floors, on a tiny run.

Timings are never asserted (the benchmark measures speed): only that every stage was measured,
is a finite number of µs, and that the floors are derived from the rows shown."""

import io
import json
import math
from contextlib import redirect_stdout

import pytest

from dcounter import stagereport, stages

STAGES = ("bare server", "durable increment", "HTTP server", "route", "counter transaction",
          "writer", "commit of a group of 1", "commit of a group of 50", "in-memory increment",
          "replicate, sender", "replicate, receiver", "JSON decoding", "wire checks")


@pytest.fixture(scope="module")
def tiny_run() -> dict:
    """One run of every stage with the smallest counts (a few seconds)."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert stages.main(["--scale", "0.01", "--blocks", "1", "--json"]) == 0
    return json.loads(out.getvalue())


def test_every_stage_is_measured_and_the_floors_follow_from_them(tiny_run):
    report = tiny_run
    rows = {name: us for name, us, _unit in report["rows"]}
    for stage in STAGES:
        assert any(name.strip().startswith(stage) for name in rows), stage
    for name, us in rows.items():
        for value in (us if isinstance(us, list) else [us]):
            assert math.isfinite(value), name
    floors = report["floors"]
    assert floors["target_replicated_us"] == 0.1 * stagereport.BENCH_BARE_US
    per_request, per_event = floors["replicated_per_request_us"], floors["replicated_per_event_us"]
    at = floors["replicated_at_batch_us"]
    assert math.isclose(at[str(stagereport.BENCH_BATCH)], per_request / stagereport.BENCH_BATCH + per_event)
    if floors["batch_needed"] is not None:  # that batch meets the target exactly
        assert math.isclose(per_request / floors["batch_needed"] + per_event,
                            floors["target_replicated_us"])
    assert floors["durable_ratio_here"] > 0 and floors["durable_ratio_bench"] > 0


def test_the_table_names_both_goals(tiny_run):
    figures = dict(tiny_run["figures"])
    figures["replicate"] = {int(batch): row for batch, row in figures["replicate"].items()}
    figures["commit"] = {1: 200.0, 7: 210.0, 50: 250.0}  # JSON keys are text; a clean line
    report = stagereport.analyse(figures)
    text = stagereport.render(report)
    assert text.splitlines()[0].startswith("stage")
    assert "Goal 1" in text and "Goal 2" in text
    assert report["floors"]["commit_fixed_us"] > 0


def test_a_bad_scale_is_refused():
    assert stages.main(["--scale", "0"]) == 2
