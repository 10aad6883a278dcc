"""The HTTP gateway: FastAPI app factory, routes, middleware and the uvicorn runner."""

from service.api.app import create_app

__all__ = ["create_app"]
