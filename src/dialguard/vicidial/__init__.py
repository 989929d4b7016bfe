"""Keeping VICIdial's do-not-call tables and dialguard's do-not-call list in step
(docs/vicidial.md): `forms` spells numbers as VICIdial stores them (pure), `tables` reads
and writes VICIdial's tables in MariaDB, `state` keeps the sync's cursors, `sync` runs it.
"""
