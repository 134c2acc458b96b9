"""The embed function: wiring only.

The default model starts loading on a second thread before the web stack imports, so the two
overlap during the init; `create_embed_app` waits for the model.
"""

from aiinfra.config import embed_settings
from aiinfra.embedding.catalog import ModelCatalog

catalog = ModelCatalog.from_settings(embed_settings()).preload()

from aiinfra.api.adapter import lambda_handler  # noqa: E402 - imported while the model loads
from aiinfra.api.embed import create_embed_app  # noqa: E402

app = create_embed_app(catalog)
handler = lambda_handler(app, service="embed")
