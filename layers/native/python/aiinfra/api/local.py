"""Every function's routes in one ASGI app, for `make serve` (the same routers Lambda runs)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from aiinfra.api.app import create_app


def create_local_app() -> FastAPI:
    from aiinfra.api import embed

    routers: list[APIRouter] = [embed.router()]
    return create_app("aiinfra", routers)
