"""The paper exchange's account (paper_exchange/account.py): the buying power open orders hold.

The account keeps every open order's hold and prices it again only when the order changes
(or, for holds priced by the quote, at every count). These scenarios drive the real engine
through a seeded day of submissions, fills, partial fills, cancels, replaces, brackets, short
sales and quote moves, and after every step compare the kept figure with a walk over the whole
book priced from scratch, the way the account priced it before it kept anything.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from paper_exchange import PaperExchange
from paper_exchange.errors import ExchangeError
from paper_exchange.fills import reservation_price, short_reservation_price
from paper_exchange.orders import HELD, PENDING_REPLACE, Order

SYMBOLS = ("AAPL", "MSFT", "SPY")
FRIDAY_MORNING = "2026-11-20T14:45:00Z"


def walked_holds(exchange: PaperExchange, exclude: Order | None = None) -> Decimal:
    """Every open order that opens a position, priced now from its own fields and the quote."""
    total = Decimal(0)
    for order in exchange._open_orders():
        if order is exclude or not order.opens_position or order.live_status == HELD or \
                order.status == PENDING_REPLACE:
            continue
        quote, last = exchange.market.quote(order.symbol), exchange._last_price(order.symbol)
        price = (reservation_price(order, quote, last) if order.side == "buy"
                 else short_reservation_price(order, quote, last))
        total += order.remaining * price
    return total


def an_exchange(seed: int) -> PaperExchange:
    """A margin account on a simulated clock with moving prices and partial fills."""
    return PaperExchange(seed=seed, simulated_clock=True, start_time=FRIDAY_MORNING, always_open=True,
                         partial_fill_probability=0.4, starting_cash=Decimal("1000000"))


def an_order_body(rng: random.Random, exchange: PaperExchange, n: int) -> dict[str, Any]:
    """A random order: market, limit, stop, stop-limit or trailing buys, brackets, sells and
    short sales, with prices around the market."""
    symbol = rng.choice(SYMBOLS)
    price = exchange.market.current_price(symbol) or Decimal(100)
    near = lambda k: str((price * Decimal(str(k))).quantize(Decimal("0.01")))  # noqa: E731
    body: dict[str, Any] = {"symbol": symbol, "qty": str(rng.randint(1, 20)), "time_in_force": "day",
                            "client_order_id": f"hold-{n}", "side": rng.choice(("buy", "buy", "sell"))}
    kind = rng.choice(("market", "limit", "limit", "stop", "stop_limit", "trailing_stop", "bracket"))
    if kind == "market":
        body["type"] = "market"
    elif kind == "limit":
        body.update(type="limit", limit_price=near(rng.choice((0.98, 0.995, 1.0, 1.01))))
    elif kind == "stop":
        body.update(type="stop", stop_price=near(1.01 if body["side"] == "buy" else 0.99))
    elif kind == "stop_limit":
        body.update(type="stop_limit", stop_price=near(1.01), limit_price=near(1.02))
        body["side"] = "buy"
    elif kind == "trailing_stop":
        body.update(type="trailing_stop", trail_percent="1")
    else:
        body.update(side="buy", type="limit", limit_price=near(rng.choice((0.99, 1.0))), order_class="bracket",
                    take_profit={"limit_price": near(1.05)}, stop_loss={"stop_price": near(0.95)},
                    time_in_force="gtc")
    return body


def act(rng: random.Random, exchange: PaperExchange, n: int) -> None:
    """One step of the day; a refusal (buying power, no shares to sell...) is part of it."""
    open_orders = [o for o in exchange._open_orders() if not o.parent_id]
    step = rng.random()
    try:
        if step < 0.45 or not open_orders:
            exchange.submit_order(an_order_body(rng, exchange, n))
        elif step < 0.6:
            exchange.cancel_order(rng.choice(open_orders).id)
        elif step < 0.75:
            order = rng.choice(open_orders)
            change: dict[str, Any] = {"qty": str(max(int(order.filled_qty) + 1, rng.randint(1, 25)))}
            if order.limit_price is not None:
                change["limit_price"] = str((order.limit_price * Decimal("1.005")).quantize(Decimal("0.01")))
            exchange.replace_order(order.id, change)
        elif step < 0.9:
            exchange.advance(rng.choice((1, 5, 30, 120)))
        else:
            symbol = rng.choice(SYMBOLS)
            price = exchange.market.current_price(symbol) or Decimal(100)
            mid = price * Decimal(str(rng.choice((0.97, 0.99, 1.0, 1.01, 1.03))))
            exchange.set_quote(symbol, (mid - Decimal("0.02")).quantize(Decimal("0.01")),
                               (mid + Decimal("0.02")).quantize(Decimal("0.01")))
    except ExchangeError:
        pass


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kept_holds_match_a_walk_of_the_whole_book_through_a_random_day(seed: int) -> None:
    exchange, rng = an_exchange(seed), random.Random(seed)
    quoted_seen = partial_seen = 0
    for n in range(400):
        act(rng, exchange, n)
        with exchange._lock:
            assert exchange._reserved_cash() == walked_holds(exchange), f"step {n}"
            some = exchange._open_orders()
            if some:
                excluded = rng.choice(some)
                assert exchange._reserved_cash(excluded) == walked_holds(exchange, excluded), f"step {n}"
            quoted_seen += len(exchange._quoted_holds)
            partial_seen += sum(1 for o in some if 0 < o.filled_qty < o.qty)
    # The day must have exercised both kinds of hold, partial fills, fills and cancels.
    assert exchange._fixed_holds and quoted_seen > 0 and partial_seen > 0
    statuses = {o.status for o in exchange._order_list}
    assert {"filled", "canceled", "replaced"} <= statuses, statuses


def test_a_filled_order_no_longer_holds_buying_power_and_a_canceled_one_gives_it_back() -> None:
    exchange = an_exchange(7)
    exchange.set_quote("AAPL", "99.99", "100.01")
    exchange.configure(partial_fill_probability=0.0)
    resting = exchange.submit_order({"symbol": "AAPL", "qty": "10", "side": "buy", "type": "limit",
                                     "limit_price": "90", "time_in_force": "day"})
    exchange.advance(1)
    assert exchange._reserved_cash() == Decimal("900")
    market = exchange.submit_order({"symbol": "AAPL", "qty": "5", "side": "buy", "type": "market",
                                    "time_in_force": "day"})
    exchange.advance(1)
    assert exchange._orders[market["id"]].status == "filled"
    assert exchange._reserved_cash() == Decimal("900")
    exchange.cancel_order(resting["id"])
    exchange.advance(1)
    assert exchange._reserved_cash() == Decimal("0") == walked_holds(exchange)


def test_a_market_buy_queued_for_the_open_holds_the_ask_as_it_moves() -> None:
    # Friday evening: a market buy waits for Monday's open and holds qty x the ask meanwhile.
    exchange = PaperExchange(seed=8, simulated_clock=True, start_time="2026-11-20T23:00:00Z", always_open=False,
                             price_simulation=False)
    exchange.set_quote("MSFT", "199.00", "200.00")
    order = exchange.submit_order({"symbol": "MSFT", "qty": "2", "side": "buy", "type": "market",
                                   "time_in_force": "day"})
    exchange.advance(1)
    assert exchange._orders[order["id"]].remaining == 2
    assert exchange._reserved_cash() == Decimal("400")
    exchange.set_quote("MSFT", "204.00", "205.00")
    assert exchange._reserved_cash() == Decimal("410") == walked_holds(exchange)


def test_last_equity_keeps_the_previous_close_after_the_close_and_rolls_at_the_next_open() -> None:
    # Friday 15:50 ET: 10 shares bought at 100.01, then the price moves up 5 before the close.
    exchange = PaperExchange(seed=9, simulated_clock=True, start_time="2026-11-20T20:50:00Z", always_open=False,
                             price_simulation=False, starting_cash=Decimal("100000"))
    exchange.set_quote("MSFT", "100.00", "100.01")
    exchange.submit_order({"symbol": "MSFT", "qty": "10", "side": "buy", "type": "market", "time_in_force": "day"})
    exchange.advance(1)
    exchange.set_quote("MSFT", "105.00", "105.01")
    exchange.advance(40 * 60)  # Friday 16:30 ET, after the close
    account = exchange.get_account()
    friday_close = Decimal(account["equity"])
    assert friday_close == Decimal(account["cash"]) + Decimal(account["long_market_value"]) > Decimal("100040")
    # the day's change is still equity against last_equity, as at Alpaca after a close
    assert Decimal(account["last_equity"]) == Decimal("100000")

    restored = PaperExchange(seed=9, simulated_clock=True, start_time="2026-11-20T20:50:00Z", always_open=False,
                             price_simulation=False)
    restored.load_state(exchange.to_state())
    for book in (exchange, restored):
        book.set_time("2026-11-23T14:31:00Z")  # Monday 09:31 ET
        assert Decimal(book.get_account()["last_equity"]) == friday_close
