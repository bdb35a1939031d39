"""Volumes on top of the formats: verified dm-verity reads, userspace LUKS2, sealed-key unlock."""
