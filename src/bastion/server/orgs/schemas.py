"""Request and response bodies of the organisation and fleet routes."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
FleetRoleName = Literal["viewer", "operator", "admin", "owner"]
OrgRoleName = Literal["owner", "member"]
EkPolicyName = Literal["certified", "allow-list", "any"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgCreateIn(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    require_2fa: bool = False


class OrgUpdateIn(StrictModel):
    require_2fa: bool | None = None
    #: members may act only with a login made through OIDC (the caller's must be one)
    require_oidc: bool | None = None


class OrgOut(BaseModel):
    id: str
    name: str
    require_2fa: bool
    role: OrgRoleName
    created_at: dt.datetime
    require_oidc: bool = False


class OrgMemberIn(StrictModel):
    email: str = Field(min_length=3, max_length=254)
    role: OrgRoleName = "member"


class MemberOut(BaseModel):
    user_id: str
    email: str
    role: str


class FleetCreateIn(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    #: certified (default) | allow-list | any (development only: no TPM hardware proof)
    ek_policy: EkPolicyName = "certified"


class FleetOut(BaseModel):
    id: str
    org_id: str
    name: str
    role: FleetRoleName
    created_at: dt.datetime
    ek_policy: EkPolicyName = "certified"
    #: the loud development-fleet warning (ek_policy "any"), else null
    warning: str | None = None


class FleetMemberIn(StrictModel):
    email: str = Field(min_length=3, max_length=254)
    role: FleetRoleName


class FleetConfigIn(StrictModel):
    config: dict[str, Any]


class FleetConfigOut(BaseModel):
    config: dict[str, Any]


class EnvValueIn(StrictModel):
    value: str = Field(max_length=limits.ENV_VALUE_MAX_LENGTH)


class EnvVarOut(BaseModel):
    name: str
    value: str


class AuditEntryOut(BaseModel):
    seq: int
    at: dt.datetime
    actor: str
    event: str
    details: dict[str, Any] | list[Any] | str
    hash: str


class InvitationIn(StrictModel):
    email: str = Field(min_length=3, max_length=254)
    role: OrgRoleName = "member"
    expires_in_days: int = Field(default=7, ge=1, le=limits.INVITATION_TTL_DAYS_MAX)


class InvitationOut(BaseModel):
    """An invitation; the same fields whether or not the address has an account."""

    id: str
    org_id: str
    org_name: str
    email: str
    role: OrgRoleName
    state: Literal["pending", "accepted", "declined", "revoked"]
    created_at: dt.datetime
    expires_at: dt.datetime
