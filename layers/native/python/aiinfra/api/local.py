"""Every function's routes in one ASGI app, for `make serve` (the same routers Lambda runs)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from aiinfra.api.app import create_app


def create_local_app() -> FastAPI:
    from aiinfra.api import embed, memory, search

    routers: list[APIRouter] = [embed.router(), search.router(), memory.router()]
    return create_app("aiinfra", routers)
