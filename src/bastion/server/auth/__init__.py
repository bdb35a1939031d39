"""Authentication and authorization: principals, credentials, RBAC, rate limits."""
