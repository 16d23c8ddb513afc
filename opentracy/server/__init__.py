"""The HTTP face: a FastAPI app over the Engine."""

from opentracy.server.app import create_app

__all__ = ["create_app"]
