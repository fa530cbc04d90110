"""A seeded chaos day: the three programs at the scheduler's fire times, and everything that goes wrong.

``play_day(seed, pg_config, exchange_url)`` plays Friday 2026-11-20 on a reset paper exchange and
emptied tables:

- **Decisions**: a batch of NEW_TRADE decisions at 09:00 (SWING brackets and DAYTRADE OTOs, entries
  above the market that fill and below it that rest); during the day, at random slots, CLOSE,
  CANCEL, AMEND and NEW_TRADE decisions, each followed by an executor run started by hand in that
  slot (overlapping the monitors, as an operator's would).
- **The programs** at the scheduler's own fire times (``scheduler.build_job_table``): the executor
  at 09:45 together with the order monitor, both monitors together every 10 minutes, the day-trade
  exit, the evening runs. Programs of one moment run in threads, each on its own database
  connection, started together; their ``sleep`` passes the exchange's simulated clock.
- **Outside actions** between runs, through alpaca-py as a person in Alpaca's app: cancel a leg,
  replace a leg or an entry, close a position (its orders canceled first, as the app does), buy
  more of a symbol.
- **Broker faults** during a moment's runs (``POST /admin/faults``, ``paper_exchange/faults.py``):
  429, 500/502/503/504, timeouts, dropped connections, and answers lost after the exchange accepted
  the request (``when="after"``).
- **Kills**: a program run dies at its k-th broker call, before the request is sent or after its
  answer came back (``ProcessKilled``, a ``BaseException`` no program catches); its connection
  closes as a dead process's would (uncommitted work rolled back, advisory locks released).
- **Price gaps**: a symbol's quote jumps several per cent between two runs (the admin API).

After every moment the invariants are checked (``tests.chaos.invariants``); after the last
scheduled run the day is settled (clean executor, order monitor, position monitor, order monitor)
and checked once more, with the end-of-day promises. Each moment's plan comes from
``random.Random(f"{seed}:{moment}")``, never from what earlier moments did: the same seed replays
the same decisions, actions, faults, kills and prices (thread interleavings are the machine's).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, MarketOrderRequest, ReplaceOrderRequest

import order_executor
import order_monitor
import position_monitor
from alpaca_client import AlpacaBroker
from config import PostgresConfig, Settings, get_schedule_config
from db_layer import TradingDB
from paper_exchange.universe import DEFAULT_UNIVERSE
from scheduler import TradingCalendar, build_job_table, fire_times
from tests.chaos.invariants import Checker, Violation
from tests.factories import ExchangeAdmin, eastern, make_settings
from trading import program as program_module
from trading import schema
from trading.market_time import EASTERN
from trading.state import TradingMode, read_trading_state, record_trading_state

DAY = "2026-11-20"
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMD", "TSLA", "AMZN", "META", "GOOGL")
CENT = Decimal("0.01")
#: The programs' broker timeout; a "timeout" fault delays the answer beyond it.
BROKER_TIMEOUT = 1.0
TIMEOUT_DELAY = 1.3
PROGRAMS: dict[str, Any] = {"order_executor": order_executor, "order_monitor": order_monitor,
                            "position_monitor": position_monitor}
FAULT_KINDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("429", {"status": 429}), ("500", {"status": 500}), ("502", {"status": 502}), ("503", {"status": 503}),
    ("504", {"status": 504}), ("dropped", {"drop": True}), ("timeout", {"delay_seconds": TIMEOUT_DELAY}),
)
#: (method, path) a fault may hit; ``None`` method: every method of the path.
FAULT_TARGETS: tuple[tuple[str | None, str], ...] = (
    ("POST", "/v2/orders"), ("POST", "/v2/orders"), ("POST", "/v2/orders"), ("GET", "/v2/orders"),
    ("GET", "/v2/orders/*"), ("PATCH", "/v2/orders/*"), ("DELETE", "/v2/orders/*"), ("DELETE", "/v2/orders/*"),
    ("GET", "/v2/orders:by_client_order_id"), (None, "/v2/positions*"), ("GET", "/v2/stocks/quotes/latest"),
    ("GET", "/v2/account"), ("GET", "/v2/clock"),
)
MUTATING = ("POST", "PATCH", "DELETE")


class ProcessKilled(BaseException):
    """The process running a program died here (raised at a broker call, caught by the day)."""


class KillingBroker(AlpacaBroker):
    """The real broker wrapper, whose process dies at its ``kill_at``-th call: before the request
    is sent, or after the broker answered (the answer is lost with the process)."""

    def __init__(self, *args: Any, kill_at: int, after: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill_at = kill_at
        self.after = after
        self.seen = 0
        self.killed = False

    def _call(self, operation: str, fn: Callable[[], Any], *, mutating: bool = False) -> Any:
        self.seen += 1
        if self.seen == self.kill_at and not self.after:
            self.killed = True
            raise ProcessKilled(f"killed before {operation}")
        result = super()._call(operation, fn, mutating=mutating)
        if self.seen == self.kill_at and self.after:
            self.killed = True
            raise ProcessKilled(f"killed after {operation} was answered")
        return result


@dataclass
class DayResult:
    """What one seed's day did and found."""

    seed: int
    runs: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    checks: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class Run:
    """One program run of a moment."""

    program: str
    kill_at: int | None = None
    kill_after: bool = False
    summary: Any = None
    killed: bool = False
    error: str | None = None


def _cents(value: float | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def truncate(db: TradingDB) -> None:
    """Empty every table of the contract and restart the ids (as the tests' ``db`` fixture)."""
    db.execute_update("SET lock_timeout = '5s'")
    db.execute_update(f"TRUNCATE {', '.join(t.name for t in schema.TABLES)} RESTART IDENTITY")


class ChaosDay:
    """One seeded day against a paper exchange at ``exchange_url`` and the database at ``pg``."""

    def __init__(self, seed: int, pg: PostgresConfig, exchange_url: str, *, settings: Settings | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.pg = pg
        self.url = exchange_url
        self.admin = ExchangeAdmin(exchange_url)
        # The day runs in seconds of wall time while the broker-error breaker counts errors per
        # wall-clock minutes: a whole day's injected faults would fall in one window and hold
        # every entry. Its own scenarios are in test_breakers.py; the other breakers stay on.
        self.settings = settings or make_settings(BREAKER_BROKER_ERRORS=100000)
        self.checker = Checker(self.connect, exchange_url, prefix=self.settings.monitor.client_order_prefix)
        self.person = TradingClient("local", "local", paper=True, url_override=exchange_url)
        self.person._retry = 0  # a person acting during an outage meets its errors (no 3-second retries)
        self.result = DayResult(seed)
        self.mids: dict[str, Decimal] = {}
        self.symbols: list[str] = []
        self.log = log or (lambda line: None)
        self._next_outside = 0
        self.no_shorting = False

    # ------------------------------------------------------------------ plumbing

    def connect(self) -> TradingDB:
        db = TradingDB(test_mode=True, config=self.pg, application_name="chaos")
        db.connect()
        return db

    def broker(self, kill_at: int | None = None, after: bool = False) -> AlpacaBroker:
        if kill_at is None:
            return AlpacaBroker(base_url=self.url, data_url=self.url, timeout=BROKER_TIMEOUT)
        return KillingBroker(base_url=self.url, data_url=self.url, timeout=BROKER_TIMEOUT, kill_at=kill_at,
                             after=after)

    def set_clock(self, moment: dt.datetime) -> None:
        """Move the simulated clock to ``moment`` (a pass); never backwards (runs' waits moved it)."""
        now = dt.datetime.fromisoformat(self.admin.state()["now"].replace("Z", "+00:00"))
        if moment > now:
            self.admin.clock(moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"))
        else:
            self.admin.step()

    def set_quotes(self) -> None:
        quotes = {}
        for symbol in self.symbols:
            mid = self.mids[symbol]
            half = max(CENT, _cents(mid * Decimal("0.0002")))
            quotes[symbol] = (mid - half, mid + half)
        self.admin.quotes(**quotes)

    # ------------------------------------------------------------------ the day

    def play(self) -> DayResult:
        started = time.monotonic()
        self.prepare()
        schedule = get_schedule_config({})
        jobs = [job for job in build_job_table(schedule, TradingCalendar(self.broker()))
                if job.program in PROGRAMS]
        start = dt.datetime.fromisoformat(eastern(DAY, "09:30").replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(eastern(DAY, "23:59").replace("Z", "+00:00"))
        moments: dict[dt.datetime, list[str]] = {}
        for moment, spec in fire_times(jobs, start, end):
            programs = moments.setdefault(moment, [])
            if spec.program not in programs:
                programs.append(spec.program)
        close = dt.datetime.fromisoformat(eastern(DAY, "16:00").replace("Z", "+00:00"))
        executor = dt.datetime.fromisoformat(eastern(DAY, "09:45").replace("Z", "+00:00"))
        for index, (moment, programs) in enumerate(sorted(moments.items())):
            self.moment(index, moment, list(programs), in_session=moment < close - dt.timedelta(minutes=30),
                        after_executor=moment > executor)
        self.settle()
        self.result.seconds = time.monotonic() - started
        return self.result

    def prepare(self) -> None:
        self.rng = random.Random(f"{self.seed}:morning")
        self.admin.reset()
        self.admin.clock(eastern(DAY, "09:00"))
        self.admin.reset_stats()
        self.admin.configure(partial_fill_probability=self.rng.choice([0, 0, 0.3]))
        # Most days on a margin account that allows shorting (an oversell shows as a short), some
        # with no_shorting as the paper-trading checklist advises (an oversell is refused).
        self.no_shorting = self.rng.random() < 0.3
        self.admin.configure_account(no_shorting=self.no_shorting)
        program_module._SKIPS_IN_A_ROW.clear()
        db = self.connect()
        try:
            truncate(db)
        finally:
            db.close()
        self.symbols = sorted(self.rng.sample(SYMBOLS, 5))
        for symbol in self.symbols:
            self.mids[symbol] = Decimal(DEFAULT_UNIVERSE[symbol][2])
        self.set_quotes()
        db = self.connect()
        try:
            for symbol in self.rng.sample(self.symbols, self.rng.randint(3, 5)):
                self.new_trade(db, symbol)
            if self.rng.random() < 0.3:  # a second decision for a symbol already decided: refused, recorded
                self.new_trade(db, self.rng.choice(self.symbols))
        finally:
            db.close()

    def new_trade(self, db: TradingDB, symbol: str, action: str = "NEW_TRADE", trade_id: int | None = None) -> int:
        mid = self.mids[symbol]
        entry = _cents(mid * Decimal(str(self.rng.choice([1.004, 1.004, 0.99, 0.97]))))
        style = self.rng.choice(["SWING", "SWING", "DAYTRADE"])
        plan: dict[str, Any] = {"planned_entry": str(entry),
                                "planned_sl": str(_cents(entry * Decimal(str(1 - self.rng.uniform(0.006, 0.03))))),
                                "trade_style": style, "planned_qty": self.rng.randint(3, 40)}
        if style == "SWING":
            plan["planned_tp"] = str(_cents(entry * Decimal(str(1 + self.rng.uniform(0.006, 0.04)))))
        return self.decide(db, symbol, action, plan, trade_id)

    def decide(self, db: TradingDB, symbol: str, action: str, plan: dict[str, Any] | None,
               trade_id: int | None) -> int:
        with db.transaction():
            row = db.execute_one(
                'INSERT INTO analysis_decision (ticker, primary_action, decision, "Approve", '
                "existing_trade_journal_id) VALUES (%s, %s, %s::jsonb, true, %s) RETURNING id",
                (symbol, action, json.dumps(plan or {}), trade_id))
        assert row is not None
        self.result.actions[f"decision {action}"] += 1
        return int(row["id"])

    # ------------------------------------------------------------------ one moment

    def moment(self, index: int, moment: dt.datetime, programs: list[str], *, in_session: bool,
               after_executor: bool) -> None:
        # Each moment's plan comes from the seed and the moment alone, so what happened earlier
        # (thread timing, which orders exist) never shifts what later moments do.
        self.rng = rng = random.Random(f"{self.seed}:{index}")
        self.set_clock(moment)
        if after_executor:
            for _ in range(rng.choice([0, 0, 0, 0, 0, 0, 1, 1, 2])):
                self.outside_action()
            if rng.random() < 0.1:
                self.operator_resumes()
        self.move_prices()
        if in_session and after_executor and "order_executor" not in programs and rng.random() < 0.08:
            self.later_decision()
            programs.append("order_executor")
        runs = [Run(program) for program in programs]
        victim = rng.choice(runs)
        kill_at, kill_after = rng.randint(1, 14), rng.random() < 0.5
        if rng.random() < 0.12:
            victim.kill_at, victim.kill_after = kill_at, kill_after
        faults = self.add_faults() if rng.random() < 0.3 else []
        # Sometimes a person acts while the programs run (then the moment is not a settled one).
        during = rng.uniform(0.0, 0.3) if after_executor and rng.random() < 0.1 else None
        self.run_together(runs, outside_after=during)
        taken = self.take_faults(faults)
        killed = any(r.killed for r in runs)
        label = f"{moment.astimezone(EASTERN):%H:%M} ET " + "+".join(
            r.program + (" (killed)" if r.killed else "") for r in runs)
        settled = (programs == ["order_monitor"] and not taken and not killed and during is None
                   and runs[0].summary is not None and runs[0].summary.outcome in ("success", "warning"))
        self.log(f"seed {self.seed}: {label}: " + "; ".join(
            f"{r.program} {r.summary.line() if r.summary else r.error or 'killed'}" for r in runs)
            + (f" [faults hit {taken}]" if taken else ""))
        self.check(label, settled=settled, runs=runs)

    def operator_resumes(self) -> None:
        """An operator checks what a breaker (or an orphan) stopped and resumes trading."""
        db = self.connect()
        try:
            state = read_trading_state(db)
            for scope in state.restricted_scopes():
                record_trading_state(db, TradingMode.ACTIVE, reason="chaos day: the operator checked and resumes",
                                     changed_by="chaos operator", scope=scope.scope, confirm_reset=True)
                self.result.actions["operator resumes"] += 1
                self.log(f"seed {self.seed}:   operator resumes {scope.scope} (was {scope.mode.value})")
        finally:
            db.close()

    def run_together(self, runs: list[Run], outside_after: float | None = None) -> None:
        """The moment's runs started together, each in a thread on its own connection; with
        ``outside_after``, a person's action that many seconds into the runs."""
        barrier = threading.Barrier(len(runs) + (outside_after is not None))

        def person() -> None:
            barrier.wait(timeout=30)
            time.sleep(outside_after or 0)
            # A sale while a program is between reading the position and sending its sell opens a
            # short on a shortable account, whatever the program does: only the account's
            # no_shorting closes that window (the health check warns while it is off). People
            # close positions during the runs only on the days the account has it.
            self.outside_action(prefix="during the runs: ", closes=self.no_shorting)

        def target(run: Run) -> None:
            broker = self.broker(run.kill_at, run.kill_after)
            try:
                db = self.connect()
            except Exception as exc:  # never expected: counted as a lost run
                run.error = f"connect: {exc}"
                return
            try:
                barrier.wait(timeout=30)
                run.summary = PROGRAMS[run.program].run_once(db, broker, settings=self.settings,
                                                             sleep=self.admin.sleeper())
            except ProcessKilled:
                run.killed = True
            except Exception as exc:  # a program must never raise out of run_once
                run.error = f"{type(exc).__name__}: {exc}"
            finally:
                db.close()
            if isinstance(broker, KillingBroker) and broker.killed:
                run.killed = True

        threads = [threading.Thread(target=target, args=(run,), name=f"chaos-{run.program}") for run in runs]
        if outside_after is not None:
            threads.append(threading.Thread(target=person, name="chaos-person"))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        for run in runs:
            self.result.runs[run.program] += 1
            if run.killed:
                self.result.faults["kill"] += 1

    def check(self, label: str, *, settled: bool, runs: list[Run], end_of_day: bool = False) -> None:
        found = self.checker.check(label, settled=settled, end_of_day=end_of_day)
        for run in runs:
            if run.error is not None:
                found.append(Violation("nothing_lost", f"{run.program} raised {run.error}", label))
            elif run.summary is not None and run.summary.outcome == "failed" and not run.killed:
                found.append(Violation("nothing_lost", f"{run.program} run failed: {run.summary.error}", label))
        self.result.checks += 1
        for violation in found:
            self.log(f"seed {self.seed}: {violation.line()}")
        self.result.violations.extend(found)

    def settle(self) -> None:
        """The day after the last scheduled run: what the next clean runs must have done."""
        self.admin.clear_faults()
        self.rng = random.Random(f"{self.seed}:settle")
        self.operator_resumes()
        for programs in (["order_executor"], ["order_monitor"], ["position_monitor"], ["order_monitor"]):
            self.admin.step()
            runs = [Run(p) for p in programs]
            self.run_together(runs)
            self.log(f"seed {self.seed}: settling: " + "; ".join(
                f"{r.program} {r.summary.line() if r.summary else r.error or 'killed'} {r.summary and r.summary.notes}"
                for r in runs))
            self.check(f"settling {programs[0]}", settled=programs == ["order_monitor"], runs=runs,
                       end_of_day=programs == ["order_monitor"])

    # ------------------------------------------------------------------ prices

    def move_prices(self) -> None:
        for symbol in self.symbols:
            step = Decimal(str(self.rng.gauss(0, 0.003)))
            if self.rng.random() < 0.03:
                step = Decimal(str(self.rng.choice([-1, 1]) * self.rng.uniform(0.02, 0.06)))
                self.result.actions["price gap"] += 1
            self.mids[symbol] = max(Decimal("1.00"), _cents(self.mids[symbol] * (1 + step)))
        self.set_quotes()

    # ------------------------------------------------------------------ faults

    def add_faults(self) -> list[tuple[int, int, str]]:
        added = []
        for _ in range(self.rng.choice([1, 1, 2])):
            name, spec = self.rng.choice(FAULT_KINDS)
            method, path = self.rng.choice(FAULT_TARGETS)
            rule: dict[str, Any] = dict(spec, path=path, count=self.rng.randint(1, 3))
            if method is not None:
                rule["method"] = method
            if method in MUTATING and "drop" not in spec and self.rng.random() < 0.6:
                rule["when"] = "after"  # the exchange accepted the request; the answer is lost
                name = f"{name} after acceptance"
            answer = self.admin.fault(**rule)
            added.append((int(answer["id"]), int(rule["count"]), name))
        return added

    def take_faults(self, added: list[tuple[int, int, str]]) -> int:
        """How many injected faults hit a request (then every rule is removed)."""
        remaining = {int(r["id"]): int(r["count"]) for r in self.admin.session.get(
            f"{self.url}/admin/faults", timeout=10).json()["faults"]}
        taken = 0
        for rule_id, count, name in added:
            hits = count - remaining.get(rule_id, 0)
            if hits:
                self.result.faults[name] += hits
                taken += hits
        self.admin.clear_faults()
        return taken

    # ------------------------------------------------------------------ people outside the system

    def _open_orders(self) -> list[Any]:
        return list(self.person.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True, limit=500)))

    def outside_action(self, prefix: str = "", *, closes: bool = True) -> None:
        kinds = ["cancel a leg", "replace a leg", "replace an entry", "close a position", "buy more"]
        kind = prefix + self.rng.choice([k for k in kinds if closes or k != "close a position"])
        try:
            done = getattr(self, "_" + kind[len(prefix):].replace(" ", "_"))()
        except APIError as exc:
            self.result.actions[f"{kind} (refused: {exc.status_code})"] += 1
            return
        except requests.RequestException:
            self.result.actions[f"{kind} (no answer)"] += 1
            return
        if done:
            self.result.actions[kind] += 1
            self.log(f"seed {self.seed}:   outside: {kind} {done if isinstance(done, str) else ''}")

    def _legs(self) -> list[Any]:
        legs = []
        for order in self._open_orders():
            for leg in [order, *(order.legs or [])]:
                if leg.side == OrderSide.SELL and leg.status.value not in ("held", "pending_cancel", "pending_replace"):
                    legs.append(leg)
        return legs

    def _cancel_a_leg(self) -> bool:
        legs = self._legs()
        if not legs:
            return False
        leg = self.rng.choice(legs)
        self.person.cancel_order_by_id(leg.id)
        return f"{leg.symbol} {leg.order_type} {leg.id}"

    def _replace_a_leg(self) -> bool:
        legs = [leg for leg in self._legs() if leg.stop_price is not None or leg.limit_price is not None]
        if not legs:
            return False
        leg = self.rng.choice(legs)
        symbol = leg.symbol
        mid = self.mids.get(symbol)
        if leg.stop_price is not None and mid is not None:
            stop = min(_cents(Decimal(str(leg.stop_price)) * Decimal(str(self.rng.uniform(0.98, 1.01)))),
                       _cents(mid * Decimal("0.995")))
            self.person.replace_order_by_id(leg.id, ReplaceOrderRequest(stop_price=float(stop)))
        elif leg.limit_price is not None and mid is not None:
            limit = max(_cents(Decimal(str(leg.limit_price)) * Decimal(str(self.rng.uniform(0.99, 1.02)))),
                        _cents(mid * Decimal("1.005")))
            self.person.replace_order_by_id(leg.id, ReplaceOrderRequest(limit_price=float(limit)))
        else:
            return False
        return f"{symbol} {leg.order_type} {leg.id}"

    def _replace_an_entry(self) -> bool:
        entries = [o for o in self._open_orders() if o.side == OrderSide.BUY and o.limit_price is not None
                   and o.status.value in ("new", "accepted", "partially_filled")]
        if not entries:
            return False
        entry = self.rng.choice(entries)
        limit = _cents(Decimal(str(entry.limit_price)) * Decimal(str(self.rng.uniform(0.995, 1.01))))
        self.person.replace_order_by_id(entry.id, ReplaceOrderRequest(limit_price=float(limit)))
        return f"{entry.symbol} {entry.id} limit {limit}"

    def _close_a_position(self) -> bool:
        held = [p for p in self.person.get_all_positions() if Decimal(str(p.qty)) > 0]
        if not held:
            return False
        symbol = self.rng.choice(held).symbol
        for order in self._open_orders():
            if order.symbol == symbol:
                try:
                    self.person.cancel_order_by_id(order.id)
                except APIError:
                    pass  # already going
        self.admin.step()  # the cancels complete (as the app waits for them; legs one pass later)
        self.admin.step()
        order = self.person.close_position(symbol)
        for _ in range(10):  # a market order: the person sees it done (a partial fill completes)
            self.admin.step()
            if self.person.get_order_by_id(order.id).status.value == "filled":
                break
        return symbol

    def _buy_more(self) -> bool:
        symbol = self.rng.choice(self.symbols)
        self._next_outside += 1
        order = self.person.submit_order(MarketOrderRequest(
            symbol=symbol, qty=self.rng.randint(1, 10), side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
            client_order_id=f"outside-{self.seed}-{self._next_outside}"))
        return f"{order.qty} {symbol}"

    # ------------------------------------------------------------------ decisions during the day

    def later_decision(self) -> None:
        db = self.connect()
        try:
            trades = db.query("trade_journal", order_by="id")
            ordered = [t for t in trades if t["status"] == "ORDERED"]
            held = [t for t in trades if t["status"] == "POSITION"]
            choices = ["NEW_TRADE"] + ["CLOSE"] * bool(held) * 2 + ["CANCEL", "AMEND"] * bool(ordered)
            action = self.rng.choice(choices)
            if action == "NEW_TRADE":
                self.new_trade(db, self.rng.choice(self.symbols))
            elif action == "CLOSE":
                trade = self.rng.choice(held)
                self.decide(db, trade["symbol"], "CLOSE", None, int(trade["id"]))
            elif action == "CANCEL":
                trade = self.rng.choice(ordered)
                self.decide(db, trade["symbol"], "CANCEL", None, int(trade["id"]))
            else:
                trade = self.rng.choice(ordered)
                self.new_trade(db, trade["symbol"], "AMEND", int(trade["id"]))
        finally:
            db.close()


def play_day(seed: int, pg: PostgresConfig, exchange_url: str, *, log: Callable[[str], None] | None = None
             ) -> DayResult:
    """Play seed ``seed``'s day; what it did and the violations it found."""
    return ChaosDay(seed, pg, exchange_url, log=log).play()


def replay_command(seed: int) -> str:
    """The command that replays one seed."""
    return f".venv/bin/python scripts/chaos_day.py --seed {seed}"
