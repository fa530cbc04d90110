"""trading/logs.py: text for people, one JSON object per line for machines, ids on every line of a run."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

import order_executor
from tests.factories import add_decision, make_settings
from tests.monitor_support import open_position
from trading import logs
from trading.errors import ConfigurationError
from trading.logs import bind_log_fields, log_context, make_handler, register_secret, reset_log_fields


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the programs' own handler writes in the JSON format, at INFO, for the whole test."""
    stream = io.StringIO()
    handler = make_handler(stream, "json")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_program_logger_and_message(captured):
    logs.set_program("order_monitor")
    logging.getLogger("order_monitor").warning("stop for %s missing", "AAPL", extra={"symbol": "AAPL"})
    (line,) = json_lines(captured)
    assert set(line) == {"time", "level", "program", "logger", "message", "symbol"}
    assert (line["level"], line["program"], line["logger"], line["message"], line["symbol"]) == \
        ("WARNING", "order_monitor", "order_monitor", "stop for AAPL missing", "AAPL")
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_every_line_of_a_run_carries_its_run_id_and_the_decision_lines_their_decision_id(db, broker, captured):
    first = add_decision(db, "AAPL")
    second = add_decision(db, "MSFT", planned_sl=500)   # refused: a stop above the entry
    summary = order_executor.run_once(db, broker, settings=make_settings())

    lines = [line for line in json_lines(captured) if not line["logger"].startswith("paper_exchange")]
    assert lines and all(line.get("run_id") == summary.run_id for line in lines), lines
    about = {line.get("decision_id") for line in lines if "decision" in line["message"]}
    assert {first, second} <= about
    refused = next(line for line in lines if "refused" in line["message"])
    assert refused["decision_id"] == second and refused["level"] == "WARNING"
    logging.getLogger("tests").info("after the run")
    assert "run_id" not in json_lines(captured)[-1]   # the run's ids end with the run


def test_lines_about_a_trade_carry_its_trade_id(db, exchange, broker, captured):
    trade = open_position(db, exchange, broker)
    opened = [line for line in json_lines(captured) if "ORDERED -> POSITION" in line["message"]]
    assert [(line["trade_id"], line["symbol"]) for line in opened] == [(trade["id"], "AAPL")]
    synced = [line for line in json_lines(captured) if line["logger"] == "trading.trades"]
    assert synced and all(line["trade_id"] == trade["id"] and "run_id" in line for line in synced)


def test_the_text_format_shows_the_ids_after_the_message():
    stream = io.StringIO()
    handler = make_handler(stream, "text")
    logger = logging.getLogger("tests.text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with log_context(run_id=42, decision_id=7):
            logger.warning("decision refused")
        logger.warning("no ids")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    with_ids, without = stream.getvalue().splitlines()
    assert with_ids.endswith("tests.text: decision refused [run_id=42 decision_id=7]")
    assert without.endswith("tests.text: no ids")


def test_secrets_are_scrubbed_from_json_lines_and_their_exceptions(captured):
    register_secret("t0ps3cret-webhook-token")
    try:
        raise RuntimeError("posting to https://hooks.example/t0ps3cret-webhook-token failed")
    except RuntimeError:
        logging.getLogger("tests").exception("send to %s failed", "t0ps3cret-webhook-token")
    text = captured.getvalue()
    assert "t0ps3cret-webhook-token" not in text
    (line,) = json_lines(captured)
    assert line["message"] == "send to *** failed" and "hooks.example/***" in line["exception"]


def test_ids_are_bound_and_restored_and_unknown_names_are_refused():
    token = bind_log_fields(run_id=5, symbol="AAPL")
    inner = bind_log_fields(symbol=None, trade_id=9)
    assert logs.log_fields() == {"run_id": 5, "trade_id": 9}
    reset_log_fields(inner)
    assert logs.log_fields() == {"run_id": 5, "symbol": "AAPL"}
    reset_log_fields(token)
    assert logs.log_fields() == {}
    with pytest.raises(ValueError, match="unknown log field"):
        bind_log_fields(trade=1)


def test_log_format_is_a_setting_with_text_as_the_default():
    assert make_settings().log_format == "text"
    assert make_settings(LOG_FORMAT="JSON").log_format == "json"
    with pytest.raises(ConfigurationError, match="LOG_FORMAT must be one of text, json"):
        make_settings(LOG_FORMAT="xml")
