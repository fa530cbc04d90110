"""The operator console's dashboard in a real browser: headless Chromium driven by Selenium.

The book is made by the real programs against the paper exchange (the executor places two
bracket entries, the order monitor records their fills, the position monitor values them and
takes the equity snapshots); the console runs under uvicorn in a thread on a free loopback port,
exactly as ``make console`` serves it. The dashboard must show the positions and the P&L to the
cent, and a Close clicked and confirmed in the page must be recorded as an approved CLOSE
decision that the next order-monitor run carries out at the paper exchange.

Chromium and chromedriver are the distribution's packages (``chromium chromium-driver``), which
``make test`` and ``.ci/run`` install when missing. Without them this test fails (never skips)
and says how to install them.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import position_monitor
from config import PostgresConfig, Secret
from console.app import create_app
from console.settings import ConsoleSettings
from db_layer import TradingDB
from tests.factories import add_decision, make_settings
from tests.monitor_support import execute, open_position, run_monitor

TOKEN = "browser-test-token-0123456789"
ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "test-artifacts"
INSTALL = ("headless Chromium and its driver are needed by the console's browser test: "
           "`make browser` (as root: apt-get install -y chromium chromium-driver); "
           "`make test` and .ci/run install them when missing")
WAIT_SECONDS = 10
MINUS = "\N{MINUS SIGN}"  # the page writes losses with a true minus sign


def chromium_paths() -> tuple[str, str]:
    """The Chromium binary and chromedriver, or a failure saying how to install them."""
    binary = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                   if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail(f"{INSTALL} (missing: {'chromium' if binary is None else 'chromedriver'})", pytrace=False)
    return binary, driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def console_url(pg_config: PostgresConfig, exchange: Any) -> Iterator[str]:
    """The console on a free loopback port, served by uvicorn in a thread (its own broker client
    on the paper exchange, for the market clock, the benchmark and the health checks)."""
    import uvicorn

    from alpaca_client import AlpacaBroker

    settings = ConsoleSettings(trading=dataclasses.replace(make_settings(), postgres=pg_config), token=Secret(TOKEN),
                               port=free_port())
    reader = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=5)
    app = create_app(settings, broker=reader,
                     make_db=lambda: TradingDB(test_mode=True, config=pg_config, application_name="console"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="console-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    try:
        yield settings.url
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_SECONDS)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver (never Selenium Manager: nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,2400", "--hide-scrollbars", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_SECONDS * 2)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, message: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A section redrawn while the condition reads it: read it again at the next poll.
    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition, message)


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def row_cells(driver: Any, symbol: str) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    row = driver.find_element(By.CSS_SELECTOR, f'#positions-table tbody tr[data-symbol="{symbol}"]')
    names = ("symbol", "qty", "entry", "current", "pnl", "pnl-pct", "stop", "target")
    return {name: row.find_element(By.CSS_SELECTOR, f"td.{name}").text for name in names}


def seed_with_the_programs(db: TradingDB, exchange: Any, broker: Any) -> dict[str, Any]:
    """10 AAPL bought at 150.00 and 5 MSFT at 400.00 by the executor and the order monitor, then
    valued by the position monitor twice (at the fill, then at AAPL 155.20/155.30, MSFT
    397.90/398.30): two snapshots, so today's P&L is the second equity against the first."""
    aapl = open_position(db, exchange, broker, "AAPL")
    msft = open_position(db, exchange, broker, "MSFT", fill_at=("399.90", "400.00"), planned_entry=Decimal("400"),
                         planned_sl=Decimal("390"), planned_tp=Decimal("420"), planned_qty=Decimal("5"))
    refused = add_decision(db, "ZZZZ")  # the executor refuses it: the exchange does not list ZZZZ
    execute(db, broker)
    position_monitor.run_once(db, broker, settings=make_settings())
    exchange.quotes(AAPL=("155.20", "155.30"), MSFT=("397.90", "398.30"))
    position_monitor.run_once(db, broker, settings=make_settings())
    return {"AAPL": aapl, "MSFT": msft, "refused": refused}


def test_the_dashboard_shows_the_book_to_the_cent_and_a_close_clicked_there_is_carried_out_by_the_order_monitor(
        db: TradingDB, exchange: Any, broker: Any, console_url: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown

    trades = seed_with_the_programs(db, exchange, broker)
    snapshots = db.execute_query("SELECT equity FROM portfolio_snapshot ORDER BY taken_at, id")
    # The exchange values the account at the mid: cash 96,500.00 (100,000 - 1,500 - 2,000), then
    # 10 x 149.95 + 5 x 399.95 = 3,499.25, later 10 x 155.25 + 5 x 398.10 = 3,543.00.
    assert [s["equity"] for s in snapshots] == [Decimal("99999.25"), Decimal("100043.00")]

    browser.get(console_url + "?refresh=1")  # the exchange's market is open: the page refreshes itself each second
    wait_for(browser, shown.presence_of_element_located(
        (By.CSS_SELECTOR, '#positions-table tbody tr[data-symbol="MSFT"]')), "the positions table never filled")
    wait_for(browser, lambda d: d.find_element(By.ID, "equity").text != "—", "the overview never filled")

    # The positions at the position monitor's mid prices: AAPL 155.25, MSFT 398.10.
    assert row_cells(browser, "AAPL") == {"symbol": "AAPL", "qty": "10", "entry": "$150.00", "current": "$155.25",
                                          "pnl": "+$52.50", "pnl-pct": "+3.50 %", "stop": "$145.00",
                                          "target": "$160.00"}
    assert row_cells(browser, "MSFT") == {"symbol": "MSFT", "qty": "5", "entry": "$400.00", "current": "$398.10",
                                          "pnl": f"{MINUS}$9.50", "pnl-pct": f"{MINUS}0.48 %", "stop": "$390.00",
                                          "target": "$420.00"}
    # The overview: the latest snapshot's equity, today's P&L against the day's first snapshot.
    assert text_of(browser, "#equity") == "$100,043.00"
    assert (text_of(browser, "#today-pnl"), text_of(browser, "#today-pnl-pct")) == ("+$43.75", "(+0.04 %)")
    assert text_of(browser, "#cash") == "$96,500.00"
    assert text_of(browser, "#unrealized") == "+$43.00"  # 52.50 - 9.50
    assert text_of(browser, "#positions-value") == "$3,543.00"  # 1552.50 + 1990.50
    assert browser.find_elements(By.CSS_SELECTOR, '#allocation-table tr[data-symbol="CASH"]')

    refused = wait_for(browser, shown.presence_of_element_located(
        (By.CSS_SELECTOR, f'#refused-table tr[data-decision="{trades["refused"]}"]')), "the refusal is not listed")
    assert "ZZZZ" in refused.text and "ZZZZ" in refused.find_element(By.CSS_SELECTOR, "td.reason").text

    browser.find_element(By.ID, "token-input").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "token-state").text == "set for this tab", "token not taken")
    browser.find_element(By.CSS_SELECTOR, '#positions-table tr[data-symbol="AAPL"] button.close').click()
    dialog = wait_for(browser, shown.visibility_of_element_located((By.ID, "confirm-dialog")), "no confirmation")
    assert "Sell all 10 AAPL" in dialog.text and "+$52.50" in dialog.text
    assert db.query("analysis_decision", {"primary_action": "CLOSE"}) == []  # nothing before the confirmation
    browser.find_element(By.ID, "confirm-yes").click()
    flash = wait_for(browser, shown.visibility_of_element_located((By.CSS_SELECTOR, "#flash p")), "no answer shown")
    assert "Close of AAPL recorded as decision" in flash.text, flash.text

    [close] = db.query("analysis_decision", {"primary_action": "CLOSE"})
    assert (close["ticker"], close["Approve"], close["executed"], close["existing_trade_journal_id"]) == \
        ("AAPL", True, False, trades["AAPL"]["id"])
    assert (close["decision"]["source"], close["decision"]["reason"]) == ("console", "closed from the operator console")
    assert exchange.positions() == {"AAPL": Decimal("10"), "MSFT": Decimal("5")}  # the page sent nothing to the broker
    wait_for(browser, lambda d: d.find_element(
        By.CSS_SELECTOR, '#positions-table tr[data-symbol="AAPL"] button.close').text == "Close requested",
        "the row does not say the Close is requested")

    summary = run_monitor(db, broker)  # order_monitor.run_once against the paper exchange

    assert summary.counts["decision_closing"] == 1
    assert exchange.positions() == {"MSFT": Decimal("5")}
    closed = db.get_by_id("trade_journal", trades["AAPL"]["id"])
    assert (closed["status"], closed["exit_reason"], closed["actual_pnl"]) == \
        ("CLOSED", "CLOSE_REQUESTED", Decimal("52.00"))  # sold at the bid, 155.20

    # Shown by the page's own refresh while the market is open, and again after a reload.
    for reload in (False, True):
        if reload:
            browser.refresh()
            assert "refresh=1" in browser.current_url
        wait_for(browser, shown.presence_of_element_located(
            (By.CSS_SELECTOR, f'#trades-table tr[data-trade="{closed["id"]}"]')), "the closed trade is not listed")
        wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, '#positions-table tr[data-symbol="AAPL"]'),
                 "the closed position is still listed as open")
    wait_for(browser, lambda d: "refreshing every 1 s while the market is open" in d.find_element(
        By.ID, "refresh-state").text, "the page does not say it refreshes while the market is open")
    assert text_of(browser, "#token-state") == "set for this tab"  # the token survives a reload of the tab
    assert row_cells(browser, "MSFT")["pnl"] == f"{MINUS}$9.50"
    closed_row = browser.find_element(By.CSS_SELECTOR, f'#trades-table tr[data-trade="{closed["id"]}"]')
    assert closed_row.find_element(By.CSS_SELECTOR, "td.exit-reason").text == "CLOSE_REQUESTED"
    assert closed_row.find_element(By.CSS_SELECTOR, "td.pnl").text == "+$52.00"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for target in (tmp_path / "console.png", ARTIFACTS / "console-browser-test.png"):
        assert browser.save_screenshot(str(target)), f"no screenshot saved to {target}"


def test_a_stop_edited_and_a_target_cancelled_in_the_dashboard_are_recorded_and_orders_link_to_their_trade(
        db: TradingDB, exchange: Any, broker: Any, console_url: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import Select

    trade = open_position(db, exchange, broker, "AAPL")  # 10 AAPL @ 150.00, stop 145, target 160
    exchange.quotes(AAPL=("151.20", "151.30"))
    position_monitor.run_once(db, broker, settings=make_settings())
    browser.get(console_url)
    browser.find_element(By.ID, "token-input").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    stop_row = f'#triggers-table tr[data-trigger="{trade["id"]}:stop"]'
    wait_for(browser, shown.presence_of_element_located((By.CSS_SELECTOR, stop_row)), "no triggers listed")
    assert browser.find_element(By.CSS_SELECTOR, f"{stop_row} button.remove").get_attribute("disabled") is not None

    browser.find_element(By.CSS_SELECTOR, f"{stop_row} button.edit").click()
    level = browser.find_element(By.CSS_SELECTOR, f"{stop_row} td.level input")
    level.clear()
    level.send_keys("147.5")
    browser.find_element(By.CSS_SELECTOR, f"{stop_row} td.level button").click()
    wait_for(browser, lambda d: "stop of AAPL" in d.find_element(By.ID, "flash").text, "the stop change not shown")
    assert "set to 147.50 (was 145.00)" in text_of(browser, "#flash")

    target_row = f'#triggers-table tr[data-trigger="{trade["id"]}:target"]'
    browser.find_element(By.CSS_SELECTOR, f"{target_row} button.remove").click()
    wait_for(browser, shown.visibility_of_element_located((By.ID, "confirm-dialog")), "no confirmation")
    browser.find_element(By.ID, "confirm-yes").click()
    wait_for(browser, lambda d: "removal recorded" in d.find_element(By.ID, "flash").text, "the removal not shown")

    amends = db.query("analysis_decision", {"primary_action": "AMEND"}, order_by="id")
    assert [(d["existing_trade_journal_id"], d["Approve"], d["executed"]) for d in amends] == \
        [(trade["id"], True, False)] * 2
    assert [{k: v for k, v in d["decision"].items() if k.startswith("planned")} for d in amends] == \
        [{"planned_sl": "147.50"}, {"planned_tp": None}]
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pending-list li:not(.empty)")) == 2,
             "the two changes are not listed as waiting for the order monitor")

    Select(browser.find_element(By.ID, "filter-type")).select_by_visible_text("STOP_LOSS")
    browser.find_element(By.CSS_SELECTOR, "#orders-filter button[type=submit]").click()
    wait_for(browser, lambda d: {r.find_elements(By.TAG_NAME, "td")[3].text for r in d.find_elements(
        By.CSS_SELECTOR, "#orders-table tbody tr[data-order]")} == {"STOP_LOSS"}, "the orders are not filtered")
    browser.find_element(By.CSS_SELECTOR, "#orders-table a.decision-link").click()
    decision = trade["initial_analysis_id"]
    wait_for(browser, shown.visibility_of_element_located((By.CSS_SELECTOR, f"#decision-{decision}.highlight")),
             "the order's decision is not shown")
    assert text_of(browser, "#detail-title").startswith(f"Trade #{trade['id']} AAPL: POSITION")


def test_the_page_formats_money_from_the_decimal_strings_exactly(console_url: str, browser: Any) -> None:
    browser.get(console_url)
    shown = browser.execute_script(
        "const f = window.consoleFormat; return [f.money('1234567.005'), f.money('-0.004', true),"
        " f.money('-9.5', true), f.money('0.1', true), f.money('12345678901234567890.125'),"
        " f.price('0.12345'), f.price('150'),"
        " f.percent('-0.475'), f.quantity('10.000000'), f.money('abc'), f.money(null)]")
    assert shown == ["$1,234,567.01", "$0.00", f"{MINUS}$9.50", "+$0.10",
                     "$12,345,678,901,234,567,890.13",  # beyond a float's 15-17 digits: exact
                     "$0.1235", "$150.00", f"{MINUS}0.48 %", "10", "abc", "—"]
