"""The built-in list of liquid US tickers the exchange knows from the start.

Prices are plausible starting points for the random walk, not market data. Asset ids are
derived from the symbol (uuid5) so they are the same on every run and after a restart.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

# Fixed namespace so asset ids are stable across runs and machines.
ASSET_NAMESPACE = uuid.UUID("6f1c1c7e-3f5a-4c51-9a57-3d1f7b7a0c42")


@dataclass
class Asset:
    """An asset of the exchange's universe, as ``GET /v2/assets`` reports it."""

    symbol: str
    name: str
    exchange: str
    price: Decimal
    tradable: bool = True
    status: str = "active"

    @property
    def id(self) -> str:
        """Stable asset id derived from the symbol."""
        return asset_id(self.symbol)

    def to_json(self) -> dict[str, object]:
        """The asset as Alpaca's ``Assets`` schema (parses with alpaca-py's ``Asset``)."""
        return {
            "id": self.id,
            "class": "us_equity",
            "exchange": self.exchange,
            "symbol": self.symbol,
            "name": self.name,
            "status": self.status,
            "tradable": self.tradable,
            "marginable": True,
            # Shortable in a margin account (the exchange's default), as liquid names are at Alpaca.
            "shortable": True,
            "easy_to_borrow": True,
            "borrow_status": "easy_to_borrow",
            "fractionable": True,
            "maintenance_margin_requirement": 30,
            "margin_requirement_long": "30",
            "margin_requirement_short": "30",
            "attributes": [],
        }


def asset_id(symbol: str) -> str:
    """The stable asset id of ``symbol``."""
    return str(uuid.uuid5(ASSET_NAMESPACE, symbol.upper()))


def tape_for(exchange: str) -> str:
    """SIP tape of a listing exchange: A for NYSE, C for NASDAQ, B for the others."""
    return {"NYSE": "A", "NASDAQ": "C"}.get(exchange, "B")


# symbol: (name, listing exchange, starting price)
DEFAULT_UNIVERSE: dict[str, tuple[str, str, str]] = {
    "AAPL": ("Apple Inc. Common Stock", "NASDAQ", "228.50"),
    "MSFT": ("Microsoft Corporation Common Stock", "NASDAQ", "425.30"),
    "NVDA": ("NVIDIA Corporation Common Stock", "NASDAQ", "135.40"),
    "AMZN": ("Amazon.com, Inc. Common Stock", "NASDAQ", "198.20"),
    "GOOGL": ("Alphabet Inc. Class A Common Stock", "NASDAQ", "172.60"),
    "GOOG": ("Alphabet Inc. Class C Capital Stock", "NASDAQ", "174.10"),
    "META": ("Meta Platforms, Inc. Class A Common Stock", "NASDAQ", "585.70"),
    "TSLA": ("Tesla, Inc. Common Stock", "NASDAQ", "248.90"),
    "AMD": ("Advanced Micro Devices, Inc. Common Stock", "NASDAQ", "152.30"),
    "AVGO": ("Broadcom Inc. Common Stock", "NASDAQ", "172.80"),
    "NFLX": ("Netflix, Inc. Common Stock", "NASDAQ", "712.40"),
    "ADBE": ("Adobe Inc. Common Stock", "NASDAQ", "505.10"),
    "CSCO": ("Cisco Systems, Inc. Common Stock", "NASDAQ", "53.20"),
    "INTC": ("Intel Corporation Common Stock", "NASDAQ", "22.85"),
    "QCOM": ("QUALCOMM Incorporated Common Stock", "NASDAQ", "165.40"),
    "COST": ("Costco Wholesale Corporation Common Stock", "NASDAQ", "905.60"),
    "PEP": ("PepsiCo, Inc. Common Stock", "NASDAQ", "165.90"),
    "JPM": ("JPMorgan Chase & Co. Common Stock", "NYSE", "224.70"),
    "BAC": ("Bank of America Corporation Common Stock", "NYSE", "41.90"),
    "WFC": ("Wells Fargo & Company Common Stock", "NYSE", "63.40"),
    "GS": ("Goldman Sachs Group, Inc. (The) Common Stock", "NYSE", "520.30"),
    "V": ("Visa Inc. Class A Common Stock", "NYSE", "289.60"),
    "MA": ("Mastercard Incorporated Common Stock", "NYSE", "510.20"),
    "UNH": ("UnitedHealth Group Incorporated Common Stock", "NYSE", "590.80"),
    "JNJ": ("Johnson & Johnson Common Stock", "NYSE", "156.30"),
    "PFE": ("Pfizer, Inc. Common Stock", "NYSE", "28.75"),
    "LLY": ("Eli Lilly and Company Common Stock", "NYSE", "880.50"),
    "XOM": ("Exxon Mobil Corporation Common Stock", "NYSE", "118.40"),
    "CVX": ("Chevron Corporation Common Stock", "NYSE", "149.20"),
    "WMT": ("Walmart Inc. Common Stock", "NYSE", "82.10"),
    "HD": ("Home Depot, Inc. (The) Common Stock", "NYSE", "395.70"),
    "KO": ("Coca-Cola Company (The) Common Stock", "NYSE", "66.20"),
    "DIS": ("Walt Disney Company (The) Common Stock", "NYSE", "96.40"),
    "BA": ("Boeing Company (The) Common Stock", "NYSE", "154.80"),
    "F": ("Ford Motor Company Common Stock", "NYSE", "10.85"),
    "T": ("AT&T Inc. Common Stock", "NYSE", "22.30"),
    "SPY": ("SPDR S&P 500 ETF Trust", "ARCA", "575.40"),
    "QQQ": ("Invesco QQQ Trust, Series 1", "NASDAQ", "492.30"),
    "IWM": ("iShares Russell 2000 ETF", "ARCA", "221.60"),
    "DIA": ("SPDR Dow Jones Industrial Average ETF Trust", "ARCA", "421.90"),
    "SIRI": ("Sirius XM Holdings Inc. Common Stock", "NASDAQ", "3.42"),
}


def default_assets() -> dict[str, Asset]:
    """A fresh copy of the built-in universe."""
    return {
        symbol: Asset(symbol=symbol, name=name, exchange=exchange, price=Decimal(price))
        for symbol, (name, exchange, price) in DEFAULT_UNIVERSE.items()
    }
