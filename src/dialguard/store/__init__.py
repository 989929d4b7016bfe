"""Everything dialguard keeps in Redis: key names (keys), the facts of a decision (facts),
the imported lists (lists, buckets, loading), the live changes (store).

docs/data-model.md is the one description of the layout; nothing outside this package
names a Redis key.
"""

from dialguard.store.errors import ListBusy, OldLayout, StoreUnavailable
from dialguard.store.store import Store

__all__ = ["ListBusy", "OldLayout", "Store", "StoreUnavailable"]
