"""The memory function: wiring only."""

from aiinfra.api.adapter import lambda_handler
from aiinfra.api.memory import create_memory_app

app = create_memory_app()
handler = lambda_handler(app, service="memory")
