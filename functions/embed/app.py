"""The embed function: wiring only."""

from aiinfra.api.adapter import lambda_handler
from aiinfra.api.embed import create_embed_app

app = create_embed_app()
handler = lambda_handler(app, service="embed")
