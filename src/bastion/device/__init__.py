"""The device plane: boot chain, provisioning client, agent, updates, attestation evidence."""
