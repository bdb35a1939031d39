"""Keys by URI, signers and verifiers, signed envelopes, the fleet PKI, TUF glue."""
