"""Append-only audit log with every entry chained to the previous one by SHA-256."""
