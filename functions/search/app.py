"""The search function: wiring only."""

from aiinfra.api.adapter import lambda_handler
from aiinfra.api.search import create_search_app

app = create_search_app()
handler = lambda_handler(app, service="search")
