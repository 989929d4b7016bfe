"""The central store, read off the event loop.

The store's drivers block (sqlite3, psycopg's connection), so every query runs on a
small pool of threads, each with a connection of its own (a SQLite connection belongs to
its thread), opened at its first query and opened again after a failure. A page is a few
queries; a supervisor's click never waits behind another's export for long with several
threads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dialguard.central import CentralStore, CentralUnavailable, open_store
from dialguard.config import CentralSettings

__all__ = ["Reader"]

T = TypeVar("T")

# Threads (so connections) at most: pages are small queries, an export holds one for its
# length; on 2 cores more would only queue in the database.
THREADS = 4


class Reader:
    def __init__(self, settings: CentralSettings, threads: int = THREADS) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dialguard-console-db")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stores: set[CentralStore] = set()

    def migrate(self) -> tuple[int, list[int]]:
        """The schema brought up to date (the console runs it at start, as `serve`)."""
        with open_store(self.settings) as store:
            return store.migrate()

    async def run(self, query: Callable[[CentralStore], T]) -> tuple[T, float]:
        """`query` with this thread's store; its result and how long it took (ms)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, query)

    def _run(self, query: Callable[[CentralStore], T]) -> tuple[T, float]:
        started = time.perf_counter()
        store: CentralStore | None = getattr(self._local, "store", None)
        if store is None:
            store = open_store(self.settings)
            self._local.store = store
            with self._lock:
                self._stores.add(store)
        try:
            result = query(store)
        except CentralUnavailable:
            # The connection may be what failed: the next query opens another.
            self._forget(store)
            raise
        return result, (time.perf_counter() - started) * 1000

    def _forget(self, store: CentralStore) -> None:
        self._local.store = None
        with self._lock:
            self._stores.discard(store)
        store.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            stores, self._stores = list(self._stores), set()
        for store in stores:
            store.close()
