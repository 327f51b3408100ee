"""The records store: what arbup knows about groups, services, packages and tasks."""

from arbup.inventory import Inventory, InventoryError, load_inventory_file
from arbup.records.schema import metadata
from arbup.records.store import GroupBusy, NotFound, RecordsError, RecordsStore

__all__ = [
    "GroupBusy",
    "Inventory",
    "InventoryError",
    "NotFound",
    "RecordsError",
    "RecordsStore",
    "load_inventory_file",
    "metadata",
]
