"""The only raw I/O in bastion: command runner, atomic files, fetch, clock."""
