"""The records store: what arbup knows about groups, services, packages and tasks."""

from arbup.inventory import Inventory, InventoryError, load_inventory_file
from arbup.records.iam import IamError, IamStore, MasterKey, Principal
from arbup.records.schema import metadata
from arbup.records.store import GroupBusy, NotFound, RecordsError, RecordsStore

__all__ = [
    "GroupBusy",
    "IamError",
    "IamStore",
    "Inventory",
    "InventoryError",
    "MasterKey",
    "NotFound",
    "Principal",
    "RecordsError",
    "RecordsStore",
    "load_inventory_file",
    "metadata",
]
