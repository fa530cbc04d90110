"""Errors grouped by what the caller does next.

Every failure the programs can meet falls into one of these families, so the code that
catches it knows its next step without reading messages:

- ``TransientError``      retry on the next cycle; nothing is concluded (broker 5xx, timeouts,
                          rate limits, dropped connections, database hiccups).
- ``RejectedError``       the input or the request is refused for good: record the reason and
                          move on (broker 403/422, invalid decisions, risk refusals).
- ``NotFoundError``       the thing was not found where we looked; look it up another way
                          before concluding it does not exist.
- ``ConfigurationError``  the program cannot run as configured: stop and tell the operator.
"""

from __future__ import annotations


class TradingError(Exception):
    """Base class of every error the project raises on purpose."""


class TransientError(TradingError):
    """A failure that may succeed if tried again later; nothing should be concluded from it."""


class BrokerUnavailableError(TransientError):
    """The broker did not answer usefully: timeout, dropped connection, 5xx or rate limit.

    ``outcome_unknown`` is True when a request that changes state (an order submission or a
    cancel) may or may not have reached the broker: the caller must look the order up before
    deciding anything.
    """

    def __init__(self, message: str, *, status: int | None = None, outcome_unknown: bool = False):
        super().__init__(message)
        self.status = status
        self.outcome_unknown = outcome_unknown


class DatabaseUnavailableError(TransientError):
    """PostgreSQL could not be reached or the connection broke."""


class WriteConflictError(TransientError):
    """Another writer took the same unique key first (a concurrent run recorded it): nothing of
    this attempt was written; the next cycle reads what the other writer recorded."""

    def __init__(self, message: str, *, constraint: str | None = None):
        super().__init__(message)
        self.constraint = constraint


class RejectedError(TradingError):
    """A refusal that will not change by retrying: record the reason and continue the batch."""

    def __init__(self, message: str, *, code: str = "REJECTED", details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.details = details or {}


class BrokerRejectedError(RejectedError):
    """The broker refused a request (HTTP 403 or 422, or another 4xx that is not 404)."""

    def __init__(self, message: str, *, status: int, broker_code: int | None = None):
        super().__init__(message, code=f"BROKER_{status}")
        self.status = status
        self.broker_code = broker_code


class DuplicateClientOrderIdError(BrokerRejectedError):
    """The client_order_id was used before: the order may already exist, so look it up."""


class NotFoundError(TradingError):
    """Not found where we looked (a 404 from the broker, a missing row)."""


class ConfigurationError(TradingError):
    """The configuration is missing or malformed; the program must stop.

    Messages name the variable and what was expected, and never contain a secret value.
    """


class UnknownStatusError(TradingError):
    """The broker reported a status word this system does not know: never guess its meaning."""
