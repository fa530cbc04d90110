"""Shared domain code of trading-monitor: statuses, errors, schema, broker types, pricing and risk."""
