"""Account configurations: ``GET``/``PATCH /v2/account/configurations``, and the two that act.

* ``suspend_trade`` true: every new order (and every replace, which is a new order) is refused
  with 403; cancels still work, as at Alpaca ("If true, new orders are blocked").
* ``no_shorting`` true: the account is long-only. A sell for more shares than the account holds
  long would open a short and is refused with Alpaca's 403 ``account is not allowed to short``.

The other settings are kept and answered as set (they change nothing here): the paper exchange
has no overnight session, no PTP symbols, no options, no trade confirmation e-mails, and its
margin rules do not read ``max_margin_multiplier``. ``dtbp_check`` and ``pdt_check`` are left out
of answers, as Alpaca has done since 2026-07-06, and ignored when sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from typing import Any

from .errors import forbidden, unprocessable

#: Retired by Alpaca (FINRA's intraday margin rule); accepted in a PATCH, never answered.
RETIRED_FIELDS = frozenset({"dtbp_check", "pdt_check"})
NOT_ALLOWED_TO_SHORT = "account is not allowed to short"
TRADE_SUSPENDED = "new orders are not accepted: the account's suspend_trade configuration is true"
_CHOICES: dict[str, tuple[Any, ...]] = {
    "max_margin_multiplier": ("1", "2", "4"),
    "trade_confirm_email": ("all", "none"),
    "max_options_trading_level": (0, 1, 2, 3),
}


@dataclass
class AccountConfigurations:
    """The account's configurations with Alpaca's defaults for a new paper account."""

    disable_overnight_trading: bool = False
    fractional_trading: bool = True
    max_margin_multiplier: str = "4"
    max_options_trading_level: int = 0
    no_shorting: bool = False
    ptp_no_exception_entry: bool = False
    suspend_trade: bool = False
    trade_confirm_email: str = "all"

    def to_json(self) -> dict[str, Any]:
        """The ``AccountConfigurations`` object Alpaca answers."""
        return asdict(self)

    def updated(self, body: Mapping[str, Any]) -> AccountConfigurations:
        """A copy with the fields of a ``PATCH`` body applied; 422 on an unknown field or a
        value of the wrong kind. ``null`` leaves a field as it is (alpaca-py sends every field
        of its model, unset ones as null)."""
        if not isinstance(body, Mapping):
            raise unprocessable("request body must be a JSON object")
        known = {f.name: f for f in fields(self)}
        values = self.to_json()
        for name, value in body.items():
            if name in RETIRED_FIELDS or value is None:
                continue
            if name not in known:
                raise unprocessable(f"unknown account configuration: {name!r}")
            values[name] = _checked(name, value, values[name])
        return AccountConfigurations(**values)

    def check_new_order(self, side: str, qty: Decimal, long_qty: Decimal) -> None:
        """Refuse a new order that these configurations forbid (403 as Alpaca).

        ``long_qty`` is the number of shares the account holds long in the symbol (0 when it
        holds none or is short): a sell beyond it would open or increase a short position.
        """
        if self.suspend_trade:
            raise forbidden(TRADE_SUSPENDED)
        if self.no_shorting and side == "sell" and qty > max(long_qty, Decimal(0)):
            raise forbidden(NOT_ALLOWED_TO_SHORT)

    def check_replace(self) -> None:
        """A replace is a new order: refused while trading is suspended."""
        if self.suspend_trade:
            raise forbidden(TRADE_SUSPENDED)

    def apply_to_account(self, account: dict[str, Any]) -> dict[str, Any]:
        """What the configurations show in ``GET /v2/account``: a long-only account has
        ``shorting_enabled`` false, a suspended one ``trade_suspended_by_user`` true."""
        account["trade_suspended_by_user"] = self.suspend_trade
        if self.no_shorting:
            account["shorting_enabled"] = False
        return account

    @classmethod
    def from_state(cls, data: Mapping[str, Any] | None) -> AccountConfigurations:
        """Rebuild saved configurations (defaults for a state file written before they existed)."""
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _checked(name: str, value: Any, current: Any) -> Any:
    if name in _CHOICES:
        choices = _CHOICES[name]
        if isinstance(value, bool) or value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise unprocessable(f"invalid {name}: {value!r} (expected one of {shown})")
        return next(c for c in choices if c == value)  # 1.0 arrives as a Decimal: keep the int
    # Every other field is a boolean.
    if not isinstance(value, bool) or not isinstance(current, bool):
        raise unprocessable(f"invalid {name}: {value!r} (expected true or false)")
    return value


class AccountConfigurationsApi:
    """The ``/v2/account/configurations`` face of :class:`~paper_exchange.engine.PaperExchange`
    (a mixin: the engine provides ``_lock``, ``_touch`` and ``configurations``)."""

    configurations: AccountConfigurations

    def get_account_configurations(self) -> dict[str, Any]:
        """``GET /v2/account/configurations``."""
        with self._lock:  # type: ignore[attr-defined]
            return self.configurations.to_json()

    def update_account_configurations(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /v2/account/configurations``: change the fields given; answer all of them."""
        with self._lock:  # type: ignore[attr-defined]
            self.configurations = self.configurations.updated(body)
            self._touch()  # type: ignore[attr-defined]
            return self.configurations.to_json()
