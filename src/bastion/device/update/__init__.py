"""The device's update path: TUF release metadata (tuf_client), install, commit, reports."""
