"""OpenID Connect sign-in: authorization code flow with PKCE, mapped to bastion users."""
