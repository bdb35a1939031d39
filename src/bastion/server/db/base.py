"""The declarative base every server model derives from, and shared column types.

Models live in their feature folder (``server/<feature>/models.py``) and derive from
:class:`Base`. Tables are created only by Alembic migrations in
``server/db/migrations/versions/`` (hand-written, run on start for SQLite and
PostgreSQL alike), never by ``metadata.create_all``.

:class:`UtcDateTime` stores naive UTC and always returns timezone-aware UTC datetimes,
so SQLite and PostgreSQL behave the same. :func:`new_id` makes opaque, non-enumerable
identifiers for rows that appear in URLs.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable migration names)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime stored as naive UTC on every backend."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


def new_id() -> str:
    """A random 128-bit identifier as 32 hex digits."""
    return secrets.token_hex(16)
