"""Users: accounts, passwords, sessions, personal API tokens and TOTP second factor."""
