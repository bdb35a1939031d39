"""Database layer of the fleet server: declarative base, engine per app, migrations."""
