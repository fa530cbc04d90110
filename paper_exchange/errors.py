"""The one exception type the engine raises, carrying Alpaca's HTTP status and error body."""

from __future__ import annotations

from typing import Any

# Alpaca's error codes (see alpaca-notes.md): the HTTP status times 100,000 plus a suffix.
CODE_BAD_REQUEST = 40010000
CODE_UNPROCESSABLE_INPUT = 40010001  # duplicate client_order_id, unknown asset
CODE_UNAUTHORIZED = 40110000
CODE_FORBIDDEN = 40310000  # insufficient qty / buying power
CODE_NOT_FOUND = 40410000
CODE_METHOD_NOT_ALLOWED = 40510000
CODE_CONFLICT = 40910000
CODE_UNPROCESSABLE = 42210000  # invalid input, not cancelable, sub-penny
CODE_RATE_LIMITED = 42910000
CODE_INTERNAL = 50010000


class ExchangeError(Exception):
    """An error answered to the client as ``{"code": ..., "message": ...}`` with an HTTP status.

    ``extra`` holds additional body fields Alpaca sends with some errors (for example
    ``base_price`` on bracket price errors or ``available`` on quantity errors).
    """

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """Return the JSON body Alpaca would send for this error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.extra)
        return body


def unprocessable(message: str, code: int = CODE_UNPROCESSABLE, **extra: Any) -> ExchangeError:
    """422 with Alpaca's generic "invalid input" code unless another is given."""
    return ExchangeError(422, code, message, **extra)


def forbidden(message: str, **extra: Any) -> ExchangeError:
    """403 as Alpaca answers for insufficient quantity or buying power."""
    return ExchangeError(403, CODE_FORBIDDEN, message, **extra)


def not_found(message: str) -> ExchangeError:
    """404 for unknown orders, positions, assets and endpoints."""
    return ExchangeError(404, CODE_NOT_FOUND, message)


def bad_request(message: str) -> ExchangeError:
    """400 for malformed requests (bad JSON, bad query parameters of the admin API)."""
    return ExchangeError(400, CODE_BAD_REQUEST, message)
