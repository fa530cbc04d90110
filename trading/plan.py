"""Decisions from ``analysis_decision``: parsed, validated, or refused with a reason.

The upstream workflow writes ``decision`` as JSON (sometimes as a JSON *string* inside the
JSON column, as n8n does when it serialises twice; both are accepted). A NEW_TRADE or AMEND
decision carries a trade plan:

    {"planned_entry": 150.25, "planned_sl": 147.00, "planned_tp": 158.00,
     "trade_style": "SWING", "planned_qty": 10, "position_size_pct": 5, "time_in_force": "gtc"}

Optional trailing stop (``trading/trailing.py``): ``trailing_stop_pct`` (the stop follows the
highest price seen at that many percent below it, 0 < pct < 50) or ``trail_price`` (that many
dollars below it); never both. The stop starts at ``planned_sl`` and only moves up.

Only long trades are supported: the stop must be below the entry and (SWING) the target above
it. ``position_size_pct`` is a percent of equity (5 means 5 %). Every refusal raises
``RejectedError`` with ``code="INVALID_DECISION"`` and a message an operator can act on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trading import lifecycle
from trading.errors import RejectedError
from trading.pricing import ZERO, display_price, mid_price, round_to_tick, to_decimal

SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{0,5}([./][A-Z]{1,2})?$")
HUNDRED = Decimal("100")
# Bounds that no real plan reaches (the dearest US share trades below $1M; ten million shares is
# beyond any single order this system places). Past them a number is a typo or garbage, and
# Decimal arithmetic on it (rounding 1e30 to the cent) would raise on every run instead of
# refusing the decision once.
MAX_PRICE = Decimal("1000000")
MIN_PRICE = Decimal("0.0001")
MAX_QTY = Decimal("10000000")


def refuse(message: str) -> RejectedError:
    """A refusal of the decision's content."""
    return RejectedError(message, code="INVALID_DECISION")


@dataclass(frozen=True)
class TradePlan:
    """A validated long trade plan, prices already on Alpaca's ticks."""

    symbol: str
    trade_style: str
    entry: Decimal
    stop: Decimal
    target: Decimal | None
    qty: Decimal | None
    size_pct: Decimal | None
    time_in_force: str
    raw: dict[str, Any]
    trail_pct: Decimal | None = None
    trail_price: Decimal | None = None

    def as_values(self) -> dict[str, Any]:
        """The planned columns of ``trade_journal``."""
        return {"symbol": self.symbol, "trade_style": self.trade_style, "planned_entry": self.entry,
                "planned_sl": self.stop, "planned_tp": self.target, "trailing_stop_pct": self.trail_pct,
                "trail_price": self.trail_price}


def decision_payload(decision: Any) -> dict[str, Any]:
    """The decision JSON as a dict; a JSON string is parsed (once more if double-encoded)."""
    payload = decision
    for _ in range(2):
        if isinstance(payload, (str, bytes)):
            text = payload.decode() if isinstance(payload, bytes) else payload
            if not text.strip():
                raise refuse("decision is empty")
            try:
                payload = json.loads(text, parse_float=Decimal)
            except ValueError as exc:
                raise refuse(f"decision is not valid JSON: {exc.args[0] if exc.args else exc}") from None
    if payload is None:
        raise refuse("decision is missing (NULL)")
    if not isinstance(payload, dict):
        raise refuse(f"decision must be a JSON object, got {type(payload).__name__}")
    return payload


def normalise_symbol(value: Any) -> str:
    """An upper-case ticker, refused unless it looks like one."""
    if not isinstance(value, str) or not value.strip():
        raise refuse("ticker is missing")
    symbol = value.strip().upper()
    if not SYMBOL_PATTERN.match(symbol):
        raise refuse(f"ticker {value!r} is not a valid symbol")
    return symbol


def _price(payload: dict[str, Any], key: str, *, required: bool) -> Decimal | None:
    try:
        value = to_decimal(payload.get(key))
    except ValueError as exc:
        raise refuse(f"{key} {exc}") from None
    if value is None:
        if required:
            raise refuse(f"{key} is missing")
        return None
    if value <= ZERO:
        raise refuse(f"{key} must be positive, got {value}")
    if value > MAX_PRICE:
        raise refuse(f"{key} {value} is too large: prices above {MAX_PRICE:,} are refused as a typo")
    if value < MIN_PRICE:
        raise refuse(f"{key} {value} is too small: the smallest price Alpaca takes is {MIN_PRICE}")
    return value


def parse_plan(row: dict[str, Any]) -> TradePlan:
    """The trade plan of a NEW_TRADE or AMEND decision row, validated."""
    payload = decision_payload(row.get("decision"))
    symbol = normalise_symbol(row.get("ticker") or payload.get("ticker") or payload.get("symbol"))
    for key in ("ticker", "symbol"):
        other = payload.get(key)
        if isinstance(other, str) and other.strip() and other.strip().upper() != symbol:
            raise refuse(f"decision {key} {other!r} differs from the row's ticker {symbol!r}")

    style = str(payload.get("trade_style") or "").strip().upper()
    if style not in lifecycle.TRADE_STYLES:
        raise refuse(f"trade_style must be SWING or DAYTRADE, got {payload.get('trade_style')!r}")

    entry = _price(payload, "planned_entry", required=True)
    stop = _price(payload, "planned_sl", required=True)
    target = _price(payload, "planned_tp", required=style == "SWING")
    assert entry is not None and stop is not None
    if stop >= entry:
        raise refuse(f"planned_sl {stop} must be below planned_entry {entry} (only long trades are supported)")
    if target is not None and target <= entry:
        raise refuse(f"planned_tp {target} must be above planned_entry {entry}")

    entry_t, stop_t = round_to_tick(entry), round_to_tick(stop)
    target_t = round_to_tick(target) if target is not None else None
    # Alpaca wants a bracket/OTO stop at least $0.01 below its entry, also after rounding.
    if entry_t - stop_t < Decimal("0.01"):
        raise refuse(f"planned_sl {stop} is less than $0.01 below planned_entry {entry} after rounding to the tick")
    if target_t is not None and target_t - entry_t < Decimal("0.01"):
        raise refuse(f"planned_tp {target} is less than $0.01 above planned_entry {entry} after rounding")

    try:
        qty = to_decimal(payload.get("planned_qty"))
        size_pct = to_decimal(payload.get("position_size_pct"))
    except ValueError as exc:
        raise refuse(f"quantity: {exc}") from None
    if qty is not None and qty <= ZERO:
        raise refuse(f"planned_qty must be positive, got {qty}")
    if qty is not None and qty > MAX_QTY:
        raise refuse(f"planned_qty {qty} is too large: more than {MAX_QTY:,} shares is refused as a typo")
    if size_pct is not None and not (ZERO < size_pct <= HUNDRED):
        raise refuse(f"position_size_pct must be a percent between 0 and 100, got {size_pct}")

    tif = str(payload.get("time_in_force") or ("day" if style == "DAYTRADE" else "gtc")).strip().lower()
    if tif not in ("day", "gtc"):
        raise refuse(f"time_in_force must be day or gtc, got {payload.get('time_in_force')!r}")
    if style == "DAYTRADE" and tif != "day":
        raise refuse("a DAYTRADE is flat by the close: its time_in_force must be day")
    trail_pct, trail_price = _trail(payload, entry_t)
    return TradePlan(symbol, style, entry_t, stop_t, target_t, qty, size_pct, tif, payload, trail_pct, trail_price)


MAX_TRAIL_PCT = Decimal("50")


def _trail(payload: dict[str, Any], entry: Decimal) -> tuple[Decimal | None, Decimal | None]:
    """The plan's trailing distance: a percent or a dollar amount below the high, or neither."""
    try:
        pct = to_decimal(payload.get("trailing_stop_pct"))
        price = to_decimal(payload.get("trail_price"))
    except ValueError as exc:
        raise refuse(f"trailing stop: {exc}") from None
    if pct is not None and price is not None:
        raise refuse("trailing_stop_pct and trail_price are both set: give one trailing distance")
    if pct is not None and not (ZERO < pct < MAX_TRAIL_PCT):
        raise refuse(f"trailing_stop_pct must be a percent above 0 and below {MAX_TRAIL_PCT}, got {pct}")
    if price is not None:
        if price <= ZERO:
            raise refuse(f"trail_price must be positive, got {price}")
        if price >= entry:
            raise refuse(f"trail_price {price} must be below planned_entry {entry} (a stop below zero)")
        price = round_to_tick(price)
    return pct, price


def referenced_ids(row: dict[str, Any]) -> tuple[int | None, str | None]:
    """The trade a CANCEL/AMEND/CLOSE/NO_ACTION names: (trade id, order id), from the row's
    columns first, then from the decision JSON."""
    payload: dict[str, Any] = {}
    try:
        payload = decision_payload(row.get("decision"))
    except RejectedError:
        payload = {}
    trade_id = row.get("existing_trade_journal_id") or payload.get("existing_trade_journal_id")
    order_id = row.get("existing_order_id") or payload.get("existing_order_id")
    if trade_id is not None:
        try:
            trade_id = int(str(trade_id).strip())
        except ValueError:
            raise refuse(f"existing_trade_journal_id {trade_id!r} is not a number") from None
    return trade_id, (str(order_id).strip() if order_id not in (None, "") else None)


def check_against_quote(plan: TradePlan, bid: Decimal, ask: Decimal, max_drift_pct: Decimal) -> str:
    """Refuse a plan the market has left behind (``RejectedError`` code ``STALE_PLAN``): the stop
    is already crossed (the bid, or the ask when there is no bid, at or below ``planned_sl``:
    the entry would fill below its own stop and be stopped out at once), or the price (the mid,
    or the one side quoted) is more than ``max_drift_pct`` percent of the entry away from it,
    either way (0: not checked). Returns what was compared, for the record. A side of 0 is no
    side; the caller handles a quote with neither."""
    price = mid_price(bid, ask)
    if price is None:
        raise ValueError("a quote with neither a bid nor an ask cannot be compared")
    touch = bid if bid > ZERO else ask
    side = "bid" if bid > ZERO else "ask"
    if touch <= plan.stop:
        raise RejectedError(f"{plan.symbol} {side} {display_price(touch)} is at or below planned_sl "
                            f"{display_price(plan.stop)}: the stop is "
                            "already crossed; the plan is stale, nothing sent", code="STALE_PLAN",
                            details={"bid": bid, "ask": ask, "planned_sl": plan.stop})
    drift = abs(price - plan.entry) / plan.entry * HUNDRED
    shown = drift.quantize(Decimal("0.01"))
    if max_drift_pct > ZERO and drift > max_drift_pct:
        raise RejectedError(f"{plan.symbol} trades at {display_price(price)} ({shown}% from planned_entry "
                            f"{display_price(plan.entry)}), beyond "
                            f"MAX_ENTRY_DRIFT_PCT {max_drift_pct}%: the plan is stale, nothing sent",
                            code="STALE_PLAN", details={"bid": bid, "ask": ask, "drift_pct": shown})
    return f"quote bid {display_price(bid)} ask {display_price(ask)}: {shown}% from planned_entry, stop not crossed"


# --------------------------------------------------------------------------- levels-only AMEND

#: A levels-only AMEND's decision JSON says ``"amend": "levels"``: it changes the stop, target or
#: trailing distance of an open position and nothing else (no new entry, no new trade).
LEVELS_KEY, LEVELS_ONLY = "amend", "levels"
#: The decision keys a levels-only AMEND may change (a key present with null removes the level;
#: the stop can never be removed).
LEVEL_KEYS = ("planned_sl", "planned_tp", "trailing_stop_pct")
#: The ``source`` of decisions recorded by the operator console (``console/``).
CONSOLE_SOURCE = "console"


@dataclass(frozen=True)
class LevelChange:
    """What a levels-only AMEND changes: only the keys in ``changes`` (a value of None removes it)."""

    changes: dict[str, Decimal | None]

    def value(self, key: str, current: Any) -> Any:
        return self.changes.get(key, current)


def is_levels_only(row: dict[str, Any]) -> bool:
    """Whether a decision row is a levels-only AMEND."""
    if str(row.get("primary_action") or "").strip().upper() != "AMEND":
        return False
    try:
        payload = decision_payload(row.get("decision"))
    except RejectedError:
        return False
    return str(payload.get(LEVELS_KEY) or "").strip().lower() == LEVELS_ONLY


def is_from_console(row: dict[str, Any]) -> bool:
    """Whether the decision was recorded by the operator console."""
    try:
        return decision_payload(row.get("decision")).get("source") == CONSOLE_SOURCE
    except RejectedError:
        return False


def parse_levels(row: dict[str, Any], trade: dict[str, Any]) -> LevelChange:
    """The levels a levels-only AMEND sets on ``trade``, validated against each other: a stop is
    always kept, below the target; a trailing distance is a percent."""
    payload = decision_payload(row.get("decision"))
    present = [key for key in LEVEL_KEYS if key in payload]
    if not present:
        raise refuse(f"a levels-only AMEND names none of {', '.join(LEVEL_KEYS)}: nothing to change")
    changes: dict[str, Decimal | None] = {}
    for key in present:
        if key == "trailing_stop_pct":
            try:
                pct = to_decimal(payload.get(key))
            except ValueError as exc:
                raise refuse(f"trailing_stop_pct {exc}") from None
            if pct is not None and not (ZERO < pct < MAX_TRAIL_PCT):
                raise refuse(f"trailing_stop_pct must be a percent above 0 and below {MAX_TRAIL_PCT}, got {pct}")
            changes[key] = pct
            continue
        price = _price(payload, key, required=key == "planned_sl")
        changes[key] = round_to_tick(price) if price is not None else None
    change = LevelChange(changes)
    stop = change.value("planned_sl", trade.get("planned_sl"))
    target = change.value("planned_tp", trade.get("planned_tp"))
    if stop is None:
        raise refuse("a position always keeps its stop: planned_sl cannot be removed")
    if target is not None and Decimal(target) <= Decimal(stop):
        raise refuse(f"the target {target} must be above the stop {stop}")
    return change
