"""Organisations, fleets, memberships with roles, fleet config and environment variables."""
