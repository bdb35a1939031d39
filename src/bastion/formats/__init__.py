"""Pure, byte-exact codecs: no I/O, no clock, no logging. Imports only errors and limits."""
