"""`dialguard audit verify --central`: the chains as stored, re-checked end to end.

For each node: every stored line re-hashed, in the node's chain order (journal file, byte
offset), each `prev` against the hash before it (the first against where the node's chain
started: zeros, the `audit.start` of a pruned journal, or after `central prune` the hash
of the last record it removed), and the last against the node's cursor (records removed
from the store's end show there). A node with chain
breaks flagged at ingest is not intact either, even where the stored lines link up (a
duplicated journal line is stored once, and its break is only in `chain_breaks`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dialguard.audit.files import day_name, unseal
from dialguard.central.ship import EDITED, NOT_SEALED, UNLINKED
from dialguard.central.store import Break, CentralStore, Pruned

__all__ = ["NodeVerification", "verify_node"]


@dataclass(slots=True)
class NodeVerification:
    node: str
    records: int = 0
    first_hash: str = ""
    last_hash: str = ""
    problem: str | None = None  # the first problem found by re-hashing
    breaks: list[Break] = field(default_factory=list)  # flagged at ingest (the first 100)
    break_count: int = 0
    pruned: Pruned | None = None  # `central prune` removed the records before this

    @property
    def intact(self) -> bool:
        return self.problem is None and not self.break_count

    def summary(self) -> str:
        if self.intact:
            since = ""
            if self.pruned is not None:
                since = (
                    f" from {self.pruned.before} on ({self.pruned.records:,} before it pruned;"
                    f" the chain starts after {self.pruned.last_hash[:16]}...)"
                )
            return (
                f"{self.node}: intact: {self.records:,} records{since}; first hash"
                f" {self.first_hash or '-'}, last hash {self.last_hash or '-'}"
            )
        said = self.problem
        if said is None:
            said = f"chain break flagged at ingest: {self.breaks[0]}"
        more = f"; {self.break_count:,} chain breaks flagged at ingest" if self.break_count else ""
        return f"{self.node}: NOT INTACT after {self.records:,} good records: {said}{more}"


def verify_node(store: CentralStore, node: str) -> NodeVerification:
    result = NodeVerification(node)
    cursor = store.cursor(node)
    if cursor is None:
        result.problem = "no such node in the central store"
        return result
    result.break_count = cursor.breaks
    result.breaks = store.breaks(node) if cursor.breaks else []
    result.pruned = store.pruned(node)
    expected: bytes | None = cursor.start_hash.encode()
    # Every record pruned: the chain's end is where it now starts.
    last = cursor.start_hash.encode() if result.pruned is not None else b""
    for file_day, offset, record_id, line in store.chain(node):
        where = f"{day_name(file_day)} byte {offset} (id {record_id})"
        sealed = unseal(line)
        if sealed is None:
            result.problem = f"{where}: {NOT_SEALED}"
            return result
        hashed, prev, digest = sealed
        if hashlib.sha256(hashed).hexdigest().encode() != digest:
            result.problem = f"{where}: {EDITED}"
            return result
        if expected is not None and prev != expected:
            result.problem = f"{where}: {UNLINKED}"
            return result
        expected = last = digest
        if not result.first_hash:
            result.first_hash = digest.decode()
        result.records += 1
    result.last_hash = last.decode()
    if not result.break_count:
        if result.last_hash != cursor.position.last_hash:
            result.problem = (
                f"the last stored record ({result.last_hash[:16] or 'none'}...) is not the"
                f" last shipped ({cursor.position.last_hash[:16]}...): records removed from"
                " the store"
            )
        elif result.records != cursor.records:
            result.problem = (
                f"{result.records:,} records stored, {cursor.records:,} shipped:"
                " records removed from the store"
            )
    return result
