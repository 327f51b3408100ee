"""The API's routers, one module per OCP area."""

from api.routes import arbitration, iam, tasks

ROUTERS = (arbitration.router, tasks.router, iam.router)
