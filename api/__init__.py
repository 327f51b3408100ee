"""arbup's HTTP API, shaped like OceanBase Cloud Platform's (OCP) API v2.

``create_app`` builds the ASGI application; ``arbup api`` serves it with uvicorn.
"""

from api.app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]
