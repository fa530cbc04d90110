"""scripts/trading_state.py: the kill switch from the command line, on the real test database."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import add_decision, make_settings
from trading import logs
from trading.state import TradingMode, read_trading_state

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "trading_state.py"


@pytest.fixture
def cli(monkeypatch, pg_config) -> Iterator[object]:
    """``main()`` on the session's test database; its logging set-up kept out of the other tests."""
    sys.path.insert(0, str(SCRIPT.parent))
    import trading_state

    monkeypatch.setattr(logs, "_configured", True)
    level = logging.getLogger().level

    def run(*args: str) -> int:
        return trading_state.main(["--test-mode", *args])

    try:
        yield run
    finally:
        logging.getLogger().setLevel(level)
        sys.path.remove(str(SCRIPT.parent))


def test_halt_is_recorded_with_its_reason_and_who_and_status_shows_it(db, cli, capsys):
    assert cli("halt", "--reason", "broker outage", "--by", "alice") == 0
    out = capsys.readouterr().out
    assert out.startswith("the account is HALTED: every program obeys it from its next run")

    state = read_trading_state(db)  # a new read, as every program's next run (or a restart) does
    assert (state.account.mode, state.account.reason, state.account.changed_by) == (
        TradingMode.HALTED, "broker outage", "alice")
    [change] = db.query("audit_event", {"event": "TRADING_STATE_CHANGED"})
    assert (change["program"], change["old_value"], change["new_value"]) == ("trading_state", "ACTIVE", "HALTED")

    assert cli("status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["scope", "mode", "since", "by", "source", "reason"]
    assert lines[1].split()[:2] == ["ACCOUNT", "HALTED"] and lines[1].endswith("broker outage")
    assert " alice " in lines[1] and " ET " in lines[1] and " manual " in lines[1]
    assert "resume --confirm" in lines[-1]


def test_resume_from_halted_needs_confirm_and_then_held_decisions_run(db, cli, capsys, exchange, broker):
    import order_executor

    assert cli("halt", "--reason", "stop") == 0
    decision_id = add_decision(db, "AAPL")
    assert order_executor.run_once(db, broker, settings=make_settings()).counts["held_back"] == 1

    assert cli("resume", "--reason", "all clear") == 2
    assert "needs an explicit confirmation" in capsys.readouterr().err
    assert read_trading_state(db).mode_for() is TradingMode.HALTED

    assert cli("resume", "--confirm", "--reason", "all clear") == 0
    assert read_trading_state(db).mode_for() is TradingMode.ACTIVE
    assert order_executor.run_once(db, broker, settings=make_settings()).counts["placed"] == 1
    assert db.get_by_id("analysis_decision", decision_id)["executed"] is True


def test_a_symbol_can_be_set_reduce_only_and_resumed_without_touching_the_account(db, cli, capsys):
    assert cli("reduce-only", "--symbol", "tsla", "--reason", "earnings tonight") == 0
    state = read_trading_state(db)
    assert (state.mode_for("TSLA"), state.mode_for("AAPL")) == (TradingMode.REDUCE_ONLY, TradingMode.ACTIVE)
    capsys.readouterr()

    assert cli("status", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(s["scope"], s["mode"]) for s in shown] == [("ACCOUNT", "ACTIVE"), ("TSLA", "REDUCE_ONLY")]
    assert shown[1]["reason"] == "earnings tonight"

    assert cli("resume", "--symbol", "TSLA", "--reason", "earnings out") == 0  # not a reset: no --confirm
    assert read_trading_state(db).mode_for("TSLA") is TradingMode.ACTIVE


def test_flatten_is_set_for_the_order_monitor_and_a_change_without_reason_is_refused(db, cli, capsys):
    assert cli("flatten", "--reason", "close everything") == 0
    assert "order monitor's next run" in capsys.readouterr().out
    assert read_trading_state(db).mode_for() is TradingMode.FLATTEN
    assert cli("halt", "--reason", "  ") == 2
    assert "needs a reason" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("halt")  # --reason is required
    assert read_trading_state(db).mode_for() is TradingMode.FLATTEN


def test_help_explains_every_mode_and_command_to_a_newcomer():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ), timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for words in ("ACTIVE", "REDUCE_ONLY", "HALTED", "FLATTEN", "halt", "flatten", "reduce-only", "resume",
                  "status", "--symbol", "--confirm", "survives restarts", ".venv/bin/python scripts/trading_state.py"):
        assert words in result.stdout, words
    sub = subprocess.run([sys.executable, str(SCRIPT), "resume", "--help"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ), timeout=60, check=False)
    assert "--confirm" in sub.stdout and "--reason" in sub.stdout
