"""Platforms the device plane runs on: ``base`` (the protocol), ``sim`` (a device folder)."""
