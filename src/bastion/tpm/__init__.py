"""The root of trust: one ``Tpm`` protocol, a software backend and a tpm2-pytss backend."""
