"""Request and response bodies of the users routes (pydantic, the HTTP edge only)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,189}$"
Scope = Literal["read", "write", "admin"]


class StrictModel(BaseModel):
    """Unknown fields are an error (422), not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class SignupIn(StrictModel):
    email: str = Field(pattern=EMAIL_PATTERN, max_length=254)
    password: str = Field(min_length=1, max_length=limits.PASSWORD_MAX_LENGTH)


class LoginIn(StrictModel):
    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=limits.PASSWORD_MAX_LENGTH)
    totp: str | None = Field(default=None, pattern=r"^[0-9]{6}$")
    recovery_code: str | None = Field(default=None, max_length=64)


class LoginOut(BaseModel):
    token: str
    expires_at: dt.datetime
    two_factor: bool


class UserOut(BaseModel):
    id: str
    email: str
    totp_enabled: bool
    created_at: dt.datetime


class TokenCreateIn(StrictModel):
    name: str = Field(min_length=1, max_length=limits.NAME_MAX_LENGTH)
    scopes: list[Scope] = Field(min_length=1, max_length=limits.TOKEN_MAX_SCOPES)
    expires_in_days: int = Field(default=30, ge=1, le=365)


class TokenOut(BaseModel):
    id: str
    name: str
    hint: str
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked: bool


class TokenCreatedOut(TokenOut):
    token: str = Field(description="the secret; shown only in this response")


class TotpBeginOut(BaseModel):
    secret: str
    uri: str


class TotpCodeIn(StrictModel):
    code: str = Field(pattern=r"^[0-9]{6}$")


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(description="single-use codes; shown only once")


class ReauthIn(StrictModel):
    password: str = Field(min_length=1, max_length=limits.PASSWORD_MAX_LENGTH)
    totp: str | None = Field(default=None, pattern=r"^[0-9]{6}$")
    recovery_code: str | None = Field(default=None, max_length=64)


class ReauthOut(BaseModel):
    authenticated_at: dt.datetime
    fresh_until: dt.datetime = Field(description="security-relevant changes allowed until then")
    two_factor: bool


class PasswordChangeIn(StrictModel):
    current_password: str = Field(min_length=1, max_length=limits.PASSWORD_MAX_LENGTH)
    new_password: str = Field(
        min_length=limits.PASSWORD_MIN_LENGTH, max_length=limits.PASSWORD_MAX_LENGTH
    )


class PasswordChangedOut(BaseModel):
    sessions_revoked: int = Field(description="the caller's other sessions, now revoked")


class SessionOut(BaseModel):
    id: str
    name: str
    hint: str
    created_at: dt.datetime
    expires_at: dt.datetime
    authenticated_at: dt.datetime | None
    two_factor: bool
    current: bool = Field(description="the session this request was made with")


class SessionsRevokedOut(BaseModel):
    revoked: int
