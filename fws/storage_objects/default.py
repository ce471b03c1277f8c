"""
The 2014 name of the default storage object:
``STORAGE_OBJECT_MODULE=filtered_websocket.storage_objects.default`` (or
``fws.storage_objects.default``) selects :mod:`fws.storage_objects.memory`.
"""

from fws.storage_objects.memory import SUBSCRIPT_READS, MemoryStorage, make_storage_object

__all__ = ["SUBSCRIPT_READS", "MemoryStorage", "make_storage_object"]
