"""The device agent's server side: signed-request authentication, heartbeat and presence."""
