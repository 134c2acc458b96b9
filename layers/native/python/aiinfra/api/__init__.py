"""HTTP face of every capability: FastAPI routers, app factories, errors, the Lambda adapter."""
