"""Every function's routes in one ASGI app, for `make serve`: each function's own app, built from
the environment as Lambda builds it, then their routes served together."""

from __future__ import annotations

from fastapi import FastAPI

from aiinfra.api.app import create_app


def create_local_app() -> FastAPI:
    from aiinfra.api.embed import create_embed_app
    from aiinfra.api.memory import create_memory_app
    from aiinfra.api.search import create_search_app

    apps = [create_embed_app(), create_search_app(), create_memory_app()]
    return create_app("aiinfra", [app.router for app in apps])
