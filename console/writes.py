"""What the console writes: only through the contract, never to the broker.

- A Close is an approved ``CLOSE`` decision naming the trade; a stop, target or trailing change
  (or removal) is an approved levels-only ``AMEND`` decision (``"amend": "levels"``). Both carry
  ``"source": "console"``, the operator and the reason, and the order monitor carries them out at
  its next run through the executor's own code path (claim, trading state, the trade's lock,
  audit): ``order_executor.OrderExecutor.carry_out_for_monitor``.
- A mode switch goes through ``trading.state.record_trading_state`` (audited, notified). The
  broker's paper/live mode is the environment's alone: the console never changes it.

Every request is also an audit row (``CONSOLE_REQUEST``) in the same transaction as its decision.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from console.app import ApiError
from console.settings import ConsoleSettings
from trading import audit
from trading.plan import CONSOLE_SOURCE, LEVELS_KEY, LEVELS_ONLY
from trading.pricing import round_to_tick
from trading.state import TradingMode, TradingStateRefused, record_trading_state

Row = dict[str, Any]
PROGRAM = "console"

#: What a trigger kind changes in the trade (and in a levels-only AMEND).
TRIGGER_KEYS = {"stop": "planned_sl", "target": "planned_tp", "trailing": "trailing_stop_pct"}


def _who(settings: ConsoleSettings) -> str:
    return f"console:{settings.operator}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _record_decision(db: Any, settings: ConsoleSettings, trade: Row, action: str, payload: Row, reason: str) -> int:
    """The approved decision and its audit row, in one transaction."""
    plan = {"source": CONSOLE_SOURCE, "operator": settings.operator, "reason": reason,
            "requested_at": _now().isoformat(), **payload}
    with db.transaction():
        row = db.execute_one(
            'INSERT INTO analysis_decision (ticker, primary_action, decision, "Approve", existing_trade_journal_id) '
            "VALUES (%s, %s, %s, true, %s) RETURNING id", (trade["symbol"], action, plan, trade["id"]))
        assert row is not None
        decision_id = int(row["id"])
        db.insert("audit_event", {
            "program": PROGRAM, "entity_type": "decision", "entity_id": decision_id, "symbol": trade["symbol"],
            "event": audit.CONSOLE_REQUEST, "new_value": "approved", "reason": f"{action} requested by "
            f"{_who(settings)}: {reason}", "details": {"trade_journal_id": trade["id"], "operator": settings.operator,
                                                        "primary_action": action, **payload}})
    return decision_id


def _pending(db: Any, trade_id: int, action: str) -> list[Row]:
    return db.execute_query(
        'SELECT id, created_at FROM analysis_decision WHERE executed = false AND "Approve" = true '
        "AND upper(btrim(primary_action)) = %s AND existing_trade_journal_id = %s ORDER BY id", (action, trade_id))


CARRIED_OUT = "recorded as an approved decision; the order monitor carries it out at its next run"


def request_close(db: Any, settings: ConsoleSettings, symbol: str, trade_id: int | None, reason: str) -> Row:
    """Record a CLOSE of every open trade of ``symbol`` (or of ``trade_id`` only); a trade that
    already has a Close waiting is not asked twice."""
    trades = db.execute_query(
        "SELECT id, symbol, status FROM trade_journal WHERE symbol = %s AND status = 'POSITION' "
        "AND (%s::bigint IS NULL OR id = %s) ORDER BY id", (symbol, trade_id, trade_id))
    if not trades:
        which = f"trade {trade_id} of {symbol}" if trade_id is not None else symbol
        raise ApiError(404, f"no open position of {which} to close")
    answers = []
    for trade in trades:
        waiting = _pending(db, trade["id"], "CLOSE")
        if waiting:
            answers.append({"trade_id": trade["id"], "decision_id": waiting[0]["id"], "already_requested": True})
            continue
        decision_id = _record_decision(db, settings, trade, "CLOSE", {}, reason)
        answers.append({"trade_id": trade["id"], "decision_id": decision_id, "already_requested": False})
    return {"symbol": symbol, "closes": answers, "status": CARRIED_OUT}


def _open_position(db: Any, trade_id: int) -> Row:
    trade = db.execute_one(
        "SELECT t.id, t.symbol, t.status, t.trade_style, t.planned_sl, t.planned_tp, t.trailing_stop_pct, "
        "t.trail_price, p.current_price FROM trade_journal t LEFT JOIN position_tracking p "
        "ON p.trade_journal_id = t.id WHERE t.id = %s", (trade_id,))
    if trade is None:
        raise ApiError(404, f"trade {trade_id} does not exist")
    if trade["status"] != "POSITION":
        raise ApiError(409, f"trade {trade_id} ({trade['symbol']}) is {trade['status']}: only an open position's "
                            "levels can be changed here")
    if _pending(db, trade_id, "CLOSE"):
        raise ApiError(409, f"trade {trade_id} ({trade['symbol']}) has a Close waiting: its levels are not changed")
    return trade


def request_level(db: Any, settings: ConsoleSettings, trade_id: int, kind: str, level: Decimal | None,
                  reason: str) -> Row:
    """Record a levels-only AMEND setting (or, with ``level`` None, removing) one trigger."""
    trade = _open_position(db, trade_id)
    key = TRIGGER_KEYS[kind]
    current = trade.get("current_price")
    if kind == "stop":
        if level is None:
            raise ApiError(409, "a position always keeps its stop (every share protected): move it, or close the "
                                "position")
        level = round_to_tick(level)
        if current is not None and level >= Decimal(current):
            raise ApiError(422, f"a stop at {level} is at or above the current price {current}: it would sell at "
                                "once; use Close to sell now")
        target = trade.get("planned_tp")
        if target is not None and level >= Decimal(target):
            raise ApiError(422, f"the stop {level} must stay below the target {target}")
    elif kind == "target" and level is not None:
        level = round_to_tick(level)
        if current is not None and level <= Decimal(current):
            raise ApiError(422, f"a target at {level} is at or below the current price {current}: it would sell "
                                "at once; use Close to sell now")
        if level <= Decimal(trade["planned_sl"]):
            raise ApiError(422, f"the target {level} must be above the stop {trade['planned_sl']}")
    elif kind == "target" and trade.get("planned_tp") is None:
        raise ApiError(404, f"trade {trade_id} has no target to remove")
    elif kind == "trailing":
        if level is not None and not (Decimal(0) < level < Decimal(50)):
            raise ApiError(422, f"a trailing distance is a percent above 0 and below 50, got {level}")
        if level is None and trade.get("trailing_stop_pct") is None:
            raise ApiError(404, f"trade {trade_id} has no trailing percent to remove")
    payload = {LEVELS_KEY: LEVELS_ONLY, key: level}
    decision_id = _record_decision(db, settings, trade, "AMEND", payload, reason)
    return {"trigger": f"{trade_id}:{kind}", "trade_id": trade_id, "symbol": trade["symbol"], "kind": kind,
            "level": level, "previous": trade.get(key), "decision_id": decision_id, "status": CARRIED_OUT}


def set_mode(db: Any, settings: ConsoleSettings, mode: str, scope: str, reason: str,
             broker_mode: str | None) -> Row:
    """Switch the trading state of ``scope`` (confirmed by the caller); the broker mode can only
    be asked for as it already is."""
    alpaca = settings.trading.alpaca
    if broker_mode is not None:
        current = "live" if alpaca.mode == "live" else "paper"
        if broker_mode != current:
            if broker_mode == "live":
                raise ApiError(409, "live trading is never enabled from the console: it needs ALPACA_PAPER=false and "
                                    "ALPACA_LIVE_CONFIRM with live keys in the environment, read when the programs "
                                    "start")
            raise ApiError(409, "the broker is live by the environment's choice (ALPACA_PAPER=false and "
                                "ALPACA_LIVE_CONFIRM): back to paper is changed there, not from the console")
    try:
        state = record_trading_state(db, TradingMode(mode), reason=reason, changed_by=_who(settings), scope=scope,
                                     confirm_reset=True, program=PROGRAM,
                                     details={"via": "console", "operator": settings.operator})
    except TradingStateRefused as exc:
        raise ApiError(409, str(exc)) from None
    return {"scope": state.scope, "mode": state.mode.value, "reason": state.reason, "changed_by": state.changed_by,
            "changed_at": state.changed_at, "source": state.source}
