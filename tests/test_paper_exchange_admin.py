"""The admin API, market data, the clock, faults, persistence and the background service."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.requests import StockBarsRequest, StockLatestQuoteRequest, StockLatestTradeRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.enums import AssetStatus, OrderSide, OrderStatus, TimeInForce
from alpaca.trading.requests import GetAssetsRequest, GetCalendarRequest, MarketOrderRequest, StopOrderRequest

from paper_exchange import PaperExchange, service
from paper_exchange.persistence import StateFile
from tests.paper_exchange_helpers import AUTH, Exchange, running_exchange


@pytest.fixture
def ex() -> Iterator[Exchange]:
    with running_exchange() as exchange:
        exchange.quote("AAPL", 150.20, 150.30)
        yield exchange


def buy(ex: Exchange, qty: int = 1, **kwargs) -> object:
    """A market buy, then one matching pass (it is acknowledged and fills); the order as submitted."""
    order = ex.trading.submit_order(
        MarketOrderRequest(symbol="AAPL", qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, **kwargs)
    )
    ex.step()
    return order


# ---------------------------------------------------------------------------- quotes, assets, account
def test_admin_quotes_accept_numbers_and_strings_and_show_in_market_data(ex: Exchange) -> None:
    ex.admin("POST", "/admin/quotes", {"MSFT": {"bid": "400.10", "ask": 400.2}, "ZZZZ": {"bid": 9.99, "ask": 10.01}})
    quotes = ex.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols=["AAPL", "MSFT", "ZZZZ"]))
    assert (quotes["MSFT"].bid_price, quotes["MSFT"].ask_price) == (400.10, 400.20)
    assert (quotes["AAPL"].bid_price, quotes["AAPL"].ask_price) == (150.20, 150.30)
    assert ex.trading.get_asset("ZZZZ").tradable is True  # a quoted symbol joins the universe
    trades = ex.data.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols="MSFT"))
    assert trades["MSFT"].price == 400.15  # the midpoint prints as the latest trade
    buy(ex, 2)
    assert ex.data.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols="AAPL"))["AAPL"].price == 150.30
    bad = ex.http.post(ex.url + "/admin/quotes", json={"AAPL": {"bid": 151, "ask": 150}}, timeout=5)
    assert bad.status_code == 400 and bad.json()["message"] == "AAPL: bid 151 is above ask 150"


def test_assets_known_unknown_added_and_not_tradable(ex: Exchange) -> None:
    assets = {a.symbol: a for a in ex.trading.get_all_assets(GetAssetsRequest(status=AssetStatus.ACTIVE))}
    assert {"AAPL", "MSFT", "NVDA", "SPY", "QQQ", "JPM", "V"} <= set(assets)
    assert len(assets) >= 40
    assert ex.trading.get_asset(str(assets["SPY"].id)).symbol == "SPY"
    with pytest.raises(APIError) as unknown:
        ex.trading.get_asset("XXXX")
    assert (unknown.value.status_code, unknown.value.message) == (404, "asset not found")
    with pytest.raises(APIError) as no_asset:
        ex.trading.submit_order(
            MarketOrderRequest(symbol="XXXX", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
        )
    assert (no_asset.value.status_code, no_asset.value.code) == (422, 40010001)
    assert no_asset.value.message == 'asset "XXXX" not found'
    ex.admin("POST", "/admin/symbols", {"ZZZZ": {"price": 12.5}, "XYZ": {"price": 10, "tradable": False}})
    assert ex.trading.get_asset("XYZ").tradable is False
    assert ex.trading.get_asset("ZZZZ").tradable is True
    # Without price simulation only manual quotes exist, so the new symbol has none yet.
    assert ex.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="ZZZZ")) == {}
    with pytest.raises(APIError) as untradable:
        ex.trading.submit_order(
            MarketOrderRequest(symbol="XYZ", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
        )
    assert (untradable.value.status_code, untradable.value.message) == (422, "asset XYZ is not tradable")


def test_account_cash_is_set_by_admin_and_moves_with_fills(ex: Exchange) -> None:
    account = ex.trading.get_account()
    assert (account.cash, account.equity, account.buying_power, account.status.value) == (
        "100000.00", "100000.00", "200000.00", "ACTIVE",  # a margin account: twice the equity
    )
    ex.admin("POST", "/admin/account", {"cash": 50000})
    buy(ex, 10)
    account = ex.trading.get_account()
    assert account.cash == "48497.00"
    assert account.long_market_value == "1502.50"  # 10 x the 150.25 midpoint
    assert account.equity == "49999.50"


def test_reset_restores_cash_and_clears_orders_positions_and_faults(ex: Exchange) -> None:
    buy(ex, 3)
    ex.admin("POST", "/admin/faults", {"status": 500, "path": "/v2/account", "count": 5})
    ex.admin("POST", "/admin/config", {"partial_fill_probability": 1})
    state = ex.admin("POST", "/admin/reset")
    assert state["orders"] == [] and state["positions"] == [] and state["cash"] == "100000.00"
    assert state["partial_fill_probability"] == 0.0  # back to the constructor's setting
    assert ex.admin("GET", "/admin/faults") == {"faults": []}
    assert ex.trading.get_account().cash == "100000.00"
    assert ex.trading.get_orders() == []


# ---------------------------------------------------------------------------- clock and calendar
def test_clock_and_calendar_agree_with_the_simulated_session(ex: Exchange) -> None:
    clock = ex.trading.get_clock()
    assert clock.is_open is True
    assert clock.timestamp == datetime(2026, 11, 20, 14, 45, tzinfo=UTC)
    assert clock.next_close == datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    assert clock.next_open == datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    ex.set_time("2026-11-26T12:00:00Z")  # Thanksgiving
    clock = ex.trading.get_clock()
    assert clock.is_open is False
    assert clock.next_open == datetime(2026, 11, 27, 14, 30, tzinfo=UTC)
    assert clock.next_close == datetime(2026, 11, 27, 18, 0, tzinfo=UTC)  # 13:00 ET early close
    days = ex.trading.get_calendar(GetCalendarRequest(start="2026-11-23", end="2026-12-28"))
    by_date = {d.date.isoformat(): d for d in days}
    assert "2026-11-26" not in by_date and "2026-12-25" not in by_date and "2026-11-28" not in by_date
    assert by_date["2026-11-27"].close.hour == 13 and by_date["2026-12-24"].close.hour == 13
    assert by_date["2026-11-25"].close.hour == 16 and by_date["2026-11-25"].open.minute == 30
    raw = ex.api("GET", "/v2/calendar?start=2026-12-24&end=2026-12-24").json()
    assert raw == [{"date": "2026-12-24", "open": "09:30", "close": "13:00", "session_open": "0400",
                    "session_close": "1700", "settlement_date": "2026-12-28"}]
    ex.trading.submit_order(
        MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
    )
    backwards = ex.http.post(ex.url + "/admin/clock", json={"now": "2026-11-01T00:00:00Z"}, timeout=5)
    assert backwards.status_code == 400  # orders exist: their timestamps must not go back
    ex.admin("POST", "/admin/reset")
    assert ex.set_time("2026-11-20T14:45:00Z")["timestamp"] == "2026-11-20T09:45:00-05:00"  # empty book: allowed
    assert ex.trading.submit_order(
        MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
    ).submitted_at == datetime(2026, 11, 20, 14, 45, tzinfo=UTC)


def test_wall_clock_exchange_refuses_clock_control_and_is_always_open() -> None:
    with running_exchange(simulated_clock=False, start_time=None) as wall:
        response = wall.http.post(wall.url + "/admin/clock", json={"advance_seconds": 60}, timeout=5)
        assert response.status_code == 409
        clock = wall.trading.get_clock()
        assert clock.is_open is True
        assert abs((clock.timestamp - datetime.now(UTC)).total_seconds()) < 5


# ---------------------------------------------------------------------------- the price simulation
def quotes_after(seed: int, steps: list[float]) -> dict[str, tuple[float, float]]:
    with running_exchange(seed=seed, price_simulation=True) as sim:
        for seconds in steps:
            sim.advance(seconds)
        quotes = sim.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols=["AAPL", "SPY", "F"]))
        return {s: (q.bid_price, q.ask_price) for s, q in quotes.items()}


def test_random_walk_is_deterministic_per_seed_and_independent_of_step_sizes() -> None:
    one_go = quotes_after(7, [3 * 3600])
    in_pieces = quotes_after(7, [300] * 36)
    assert one_go == in_pieces
    assert quotes_after(8, [3 * 3600]) != one_go
    for bid, ask in one_go.values():
        assert 0 < bid < ask
        spread_bps = (ask - bid) / ((ask + bid) / 2) * 10_000
        assert spread_bps <= 12  # 1-5 bps, widened only by rounding to the cent


def test_manual_quote_freezes_a_symbol_and_stops_elect_during_a_walk() -> None:
    with running_exchange(price_simulation=True) as sim:
        start = sim.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="SPY"))["SPY"]
        sim.quote("MSFT", 400.00, 400.10)
        sim.trading.submit_order(
            MarketOrderRequest(symbol="SPY", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
        )
        stop_price = round(start.bid_price * 0.999, 2)  # about 1.5 sigma of an hour's walk away
        stop = sim.trading.submit_order(
            StopOrderRequest(symbol="SPY", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                             stop_price=stop_price)
        )
        lowest_bid = start.bid_price
        for _ in range(390):  # minute by minute through the session
            sim.advance(60)
            quote = sim.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="SPY"))["SPY"]
            order = sim.trading.get_order_by_id(stop.id)
            if order.status == OrderStatus.FILLED:
                # Elected at the step whose bid crossed the stop, and filled at that bid.
                assert quote.bid_price <= stop_price
                assert float(order.filled_avg_price) == quote.bid_price
                break
            lowest_bid = min(lowest_bid, quote.bid_price)
            assert lowest_bid > stop_price
        else:
            pytest.fail("the walk never reached the stop in a whole session")
        msft = sim.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="MSFT"))["MSFT"]
        assert (msft.bid_price, msft.ask_price) == (400.00, 400.10)
        sim.admin("POST", "/admin/symbols", {"ZZZZ": {"price": 12.5}})
        added = sim.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="ZZZZ"))["ZZZZ"]
        assert added.bid_price < 12.5 < added.ask_price


def test_bars_cover_history_and_the_live_session(ex: Exchange) -> None:
    ex.advance(3600)
    bars = ex.data.get_stock_bars(
        StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Day, start=datetime(2026, 10, 1, tzinfo=UTC))
    )["AAPL"]
    assert len(bars) >= 20
    assert [b.timestamp for b in bars] == sorted(b.timestamp for b in bars)
    assert all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in bars)
    assert bars[-1].timestamp == datetime(2026, 11, 20, 5, 0, tzinfo=UTC)  # midnight New York
    minutes = ex.data.get_stock_bars(
        StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute, start=datetime(2026, 11, 20, tzinfo=UTC))
    )["AAPL"]
    assert minutes[-1].close == 150.25


# ---------------------------------------------------------------------------- faults and stats
def test_fault_before_replaces_the_request_and_counts_down(ex: Exchange) -> None:
    rule = ex.admin("POST", "/admin/faults", {"status": 500, "count": 2, "method": "POST", "path": "/v2/orders"})
    assert rule["count"] == 2 and rule["when"] == "before"
    for _ in range(2):
        with pytest.raises(APIError) as failed:
            buy(ex)
        assert failed.value.status_code == 500
        assert failed.value.code == 50010000
    assert ex.trading.get_orders() == [] and ex.trading.get_all_positions() == []
    buy(ex)
    assert ex.admin("GET", "/admin/faults") == {"faults": []}
    assert len(ex.trading.get_all_positions()) == 1


def test_fault_after_processes_the_order_then_drops_the_connection(ex: Exchange) -> None:
    ex.admin("POST", "/admin/faults", {"drop": True, "when": "after", "method": "POST", "path": "/v2/orders"})
    with pytest.raises(requests.exceptions.ConnectionError):
        buy(ex, 2, client_order_id="tm-lost-answer")
    order = ex.trading.get_order_by_client_id("tm-lost-answer")  # the broker did accept it
    assert order.status == OrderStatus.PENDING_NEW and order.qty == "2"
    ex.step()
    assert ex.trading.get_order_by_client_id("tm-lost-answer").status == OrderStatus.FILLED


def test_fault_after_with_status_and_429_headers(ex: Exchange) -> None:
    ex.admin("POST", "/admin/faults", {"status": 504, "when": "after", "path": "/v2/orders", "method": "POST"})
    response = ex.api("POST", "/v2/orders", json={"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market",
                                                 "time_in_force": "day", "client_order_id": "tm-504"})
    assert response.status_code == 504 and response.json()["code"] == 50410000
    ex.step()
    assert ex.trading.get_order_by_client_id("tm-504").status == OrderStatus.FILLED
    ex.admin("POST", "/admin/faults", {"status": 429, "path": "/v2/account"})
    limited = ex.api("GET", "/v2/account")
    assert limited.status_code == 429
    assert limited.headers["X-RateLimit-Limit"] == "200" and limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) > time.time() - 1
    assert ex.api("GET", "/v2/account").status_code == 200


def test_fault_delay_and_admin_paths_are_never_faulted(ex: Exchange) -> None:
    ex.admin("POST", "/admin/faults", {"delay_seconds": 0.3, "path": "/v2/clock"})
    ex.admin("POST", "/admin/faults", {"status": 503, "count": 3})  # any /v2 path
    listed = ex.admin("GET", "/admin/faults")["faults"]
    assert [f["path"] for f in listed] == ["/v2/clock", None]
    started = time.monotonic()
    assert ex.api("GET", "/v2/clock").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert ex.admin("GET", "/admin/health")["status"] == "ok"  # /admin is not faulted
    assert ex.api("GET", "/v2/account").status_code == 503
    ex.admin("DELETE", "/admin/faults")
    assert ex.api("GET", "/v2/account").status_code == 200
    bad = ex.http.post(ex.url + "/admin/faults", json={"path": "/admin/quotes", "status": 500}, timeout=5)
    assert bad.status_code == 400


def test_stats_count_api_requests_since_reset(ex: Exchange) -> None:
    ex.admin("DELETE", "/admin/stats")
    buy(ex)
    ex.trading.get_orders()
    ex.trading.get_orders()
    ex.trading.get_account()
    stats = ex.admin("GET", "/admin/stats")
    assert stats["total"] == 4
    assert stats["requests"] == {"POST /v2/orders": 1, "GET /v2/orders": 2, "GET /v2/account": 1}
    assert ex.admin("DELETE", "/admin/stats")["total"] == 0


def test_concurrent_clients_do_not_lose_orders(ex: Exchange) -> None:
    def submit(i: int) -> str:
        response = ex.http.post(
            ex.url + "/v2/orders", headers=AUTH, timeout=10,
            json={"symbol": "AAPL", "qty": 1, "side": "buy", "type": "limit", "limit_price": 100,
                  "time_in_force": "gtc", "client_order_id": f"c-{i}"},
        )
        assert response.status_code == 200, response.text
        return response.json()["submitted_at"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        stamps = list(pool.map(submit, range(80)))
    assert len(set(stamps)) == 80
    assert len(ex.api("GET", "/v2/orders?limit=500").json()) == 80


# ---------------------------------------------------------------------------- persistence and service
def test_state_file_round_trip_keeps_orders_positions_clock_and_the_walk(tmp_path: Path) -> None:
    start = "2026-11-20T15:00:00Z"
    original = PaperExchange(seed=3, simulated_clock=True, start_time=start)
    original.set_quote("AAPL", "150.20", "150.30")
    original.submit_order({"symbol": "AAPL", "qty": 4, "side": "buy", "type": "market", "time_in_force": "day"})
    original.submit_order({"symbol": "MSFT", "qty": 1, "side": "buy", "type": "limit", "limit_price": 300,
                           "time_in_force": "gtc", "client_order_id": "keep-me"})
    original.advance(600)
    saver = StateFile(tmp_path / "state.json", original)
    saver.save()
    restored = PaperExchange(seed=99, simulated_clock=True, start_time="2030-01-01T00:00:00Z")
    assert StateFile(tmp_path / "state.json", restored).load() is True
    assert restored.now() == original.now()
    assert restored.list_positions() == original.list_positions()
    assert restored.get_account() == original.get_account()
    assert restored.get_order_by_client_id("keep-me") == original.get_order_by_client_id("keep-me")
    original.advance(1800)
    restored.advance(1800)
    assert restored.latest_quotes("SPY,MSFT,AAPL") == original.latest_quotes("SPY,MSFT,AAPL")
    with pytest.raises(Exception, match="client_order_id must be unique"):
        restored.submit_order({"symbol": "MSFT", "qty": 1, "side": "buy", "type": "limit", "limit_price": 300,
                               "time_in_force": "gtc", "client_order_id": "keep-me"})


def test_service_starts_one_daemon_for_concurrent_callers_and_stops_it(tmp_path: Path) -> None:
    port = _free_port()
    urls: list[str] = []
    threads = [threading.Thread(target=lambda: urls.append(service.ensure_running(tmp_path, port))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert urls == [f"http://127.0.0.1:{port}"] * 3
    pid = int((tmp_path / "exchange.pid").read_text())
    try:
        requests.post(urls[0] + "/admin/quotes", json={"AAPL": {"bid": 150.2, "ask": 150.3}}, timeout=5)
        created = requests.post(urls[0] + "/v2/orders", headers=AUTH, timeout=5, json={
            "symbol": "AAPL", "qty": 2, "side": "buy", "type": "market", "time_in_force": "day"})
        assert created.status_code == 200
        assert service.status(tmp_path, port)["running"] is True
    finally:
        assert service.stop(tmp_path) is True
    assert service.status(tmp_path, port) == {
        "running": False, "pid": None, "url": f"http://127.0.0.1:{port}", "healthy": False,
        "state_file": str(tmp_path / "state.json"), "log_file": str(tmp_path / "exchange.log"),
    }
    assert service.stop(tmp_path) is False
    assert (tmp_path / "state.json").exists()  # saved on clean shutdown
    url = service.ensure_running(tmp_path, port)  # a new process sees the same broker
    try:
        assert int((tmp_path / "exchange.pid").read_text()) != pid
        positions = requests.get(url + "/v2/positions", headers=AUTH, timeout=5).json()
        assert [(p["symbol"], p["qty"]) for p in positions] == [("AAPL", "2")]
    finally:
        service.stop(tmp_path)


def test_cli_help_and_status_commands(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    helped = subprocess.run([sys.executable, "-m", "paper_exchange", "--help"], capture_output=True, text=True,
                            check=True, timeout=30, cwd=root)
    assert "ALPACA" not in helped.stderr and "--simulated-clock" in helped.stdout and "stop" in helped.stdout
    status = subprocess.run([sys.executable, "-m", "paper_exchange", "status", "--state-dir", str(tmp_path),
                             "--port", str(_free_port())], capture_output=True, text=True, timeout=30, cwd=root)
    assert status.returncode == 3 and '"running": false' in status.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serving_on_a_port_where_an_exchange_already_runs_says_what_and_how_to_stop_it(exchange_server) -> None:
    root = Path(__file__).resolve().parents[1]
    port = exchange_server.url.rsplit(":", 1)[1].strip("/")
    result = subprocess.run([sys.executable, "-m", "paper_exchange", "--port", port], capture_output=True,
                            text=True, timeout=30, cwd=root)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"a paper exchange already runs on http://127.0.0.1:{port}" in result.stderr
    assert "Ctrl-C" in result.stderr and "--port" in result.stderr


def test_serving_on_a_port_held_by_something_else_names_the_port_and_no_traceback() -> None:
    import socket

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "paper_exchange", "--port", str(port)], capture_output=True,
                                text=True, timeout=30, cwd=root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "not a paper exchange" in result.stderr


def test_pending_cancels_acknowledgements_and_shorts_survive_a_restart() -> None:
    import json

    from paper_exchange import PaperExchange

    original = PaperExchange(seed=3, simulated_clock=True, start_time="2026-11-20T14:45:00Z", price_simulation=False)
    original.set_quote("AAPL", "150.20", "150.30")
    resting = original.submit_order({"symbol": "AAPL", "qty": 5, "side": "buy", "type": "limit", "limit_price": 149,
                                     "time_in_force": "gtc"})
    original.advance(0)
    original.cancel_order(resting["id"])
    short = original.submit_order({"symbol": "AAPL", "qty": 2, "side": "sell", "type": "market",
                                   "time_in_force": "day"})
    restored = PaperExchange(seed=99, simulated_clock=True, start_time="2030-01-01T00:00:00Z")
    restored.load_state(json.loads(json.dumps(original.to_state())))
    assert (restored.get_order(resting["id"])["status"], restored.get_order(short["id"])["status"]) == (
        "pending_cancel", "pending_new")
    restored.advance(0)  # the pending steps complete after the restart as they would have before it
    assert (restored.get_order(resting["id"])["status"], restored.get_order(short["id"])["status"]) == (
        "canceled", "filled")
    [position] = restored.list_positions()
    assert (position["qty"], position["side"], position["cost_basis"]) == ("-2", "short", "-300.40")
