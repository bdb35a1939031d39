"""The device agent: ``bastion agent run DEV`` (docs/agent.md, ADRs 0032 and 0033).

* :mod:`.signing` signs every request and the channel upgrade in the TPM (RFC 9421);
* :mod:`.logbuffer` the offline log buffer on the data volume;
* :mod:`.actions` what commands do to the device (systemctl through the runner);
* :mod:`.agent` the loop: heartbeat, config sync, log shipping, the command channel,
  reconnect with backoff and jitter.
"""
