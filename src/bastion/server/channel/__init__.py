"""Remote control: commands queued in the database and the device's WebSocket channel."""
