"""Liveness and version: the one route anyone may call."""
