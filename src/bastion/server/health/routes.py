"""``GET /v1/health``: liveness, version and schema heads (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from bastion import __version__
from bastion.server.auth.deps import CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/health")
def health(_principal: CurrentPrincipal) -> Health:
    """Liveness probe; rate-limited like every route."""
    return Health(status="ok", version=__version__)


def install(app: FastAPI) -> None:
    app.include_router(router)
