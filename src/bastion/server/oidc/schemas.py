"""HTTP shapes of OIDC sign-in (pydantic, at the edge only)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits


class OidcCallbackOut(BaseModel):
    """A session, or (``second_factor_required``) a ticket for the TOTP step."""

    token: str | None = None
    expires_at: dt.datetime | None = None
    two_factor: bool = False
    second_factor_required: bool = False
    ticket: str | None = Field(
        default=None, description="POST it with a code to /v1/auth/oidc/second-factor"
    )
    ticket_expires_at: dt.datetime | None = None


class OidcSecondFactorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket: str = Field(min_length=1, max_length=limits.OIDC_PARAM_MAX_LENGTH)
    totp: str | None = Field(default=None, pattern=r"^[0-9]{6}$")
    recovery_code: str | None = Field(default=None, max_length=64)
