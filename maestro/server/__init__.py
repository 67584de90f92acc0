"""The OpenAI-compatible chat API and the Maestro runs API, as a Starlette ASGI app.

``create_app(model=..., database=..., api_key=...)`` builds it; ``maestro serve`` runs it
under uvicorn. A composition root: nothing in ``maestro``'s core imports this package.
"""

from maestro.server.app import create_app
from maestro.server.errors import APIError

__all__ = ["APIError", "create_app"]
