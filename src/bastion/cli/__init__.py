"""The thin command line: parse, call, print, map errors to exit codes.

Every module in this package that defines ``register(subparsers)`` adds one
command group; ``main`` discovers them, so adding a group touches one file.
"""
