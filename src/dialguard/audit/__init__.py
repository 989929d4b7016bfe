"""The audit journal: one hash-chained JSON record per decision or recorded outcome.

`Journal(directory).append(record)` is the only writer (writer.py); `files` holds the
on-disk format shared by the writer and the readers (reader.py: search, stats, export,
verify, tail). docs/audit.md explains the format and why.
"""

from dialguard.audit.files import AuditUnavailable
from dialguard.audit.writer import Journal, decision_record

__all__ = ["AuditUnavailable", "Journal", "decision_record"]
