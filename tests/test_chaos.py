"""The chaos day in the suite: a few seeds of ``tests.chaos.day`` (``make chaos`` plays many).

Each seed plays a whole trading day (the programs at the scheduler's fire times, overlapping;
outside actions, broker faults, killed runs, price gaps) and checks design.md §6 after every run.
A failure prints the seed, the violations and the command that replays it.
"""

from __future__ import annotations

import pytest

from tests.chaos.day import play_day, replay_command
from tests.chaos.invariants import count

#: Seeds played by the suite (a few seconds each); ``make chaos SEEDS=200`` plays 0..199.
SUITE_SEEDS = (1, 2, 3)


@pytest.mark.parametrize("seed", SUITE_SEEDS)
def test_chaos_day_keeps_every_invariant(seed, pg_config, exchange_server):
    result = play_day(seed, pg_config, exchange_server.url)
    assert result.runs["order_monitor"] > 50 and result.checks > 50, result.runs
    lines = "\n".join(v.line() for v in result.violations[:20])
    assert result.ok, (f"seed {seed}: {count(result.violations)}\n{lines}\nreplay: {replay_command(seed)}")
