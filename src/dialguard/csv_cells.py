"""Cells of the CSV files dialguard writes, safe to open in a spreadsheet.

Excel, LibreOffice and Google Sheets run a cell that starts with `=`, `+`, `-`, `@`, a tab
or a carriage return as a formula: a dial string `=HYPERLINK(...)` would become a link in
the supervisor's sheet, a caller ID `=cmd|...` a command. OWASP's rule (CSV injection) is
to prefix such a cell with `'`, which spreadsheets read as "this cell is text".
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["cell", "cells"]

_FORMULA_START = frozenset("=+-@\t\r")
_FIRST = _FORMULA_START | {"'"}


def cell(value: object) -> object:
    """A string that would start a formula, with a `'` in front; anything else as it is.

    A string already starting with quotes before such a character gets one more, so that
    one leading `'` off a defused cell always gives the value back (a quote that came
    with the data is never mistaken for ours). Numbers pass as they are: they are ours
    (timestamps, counters) and a spreadsheet should see them as numbers.
    """
    if isinstance(value, str) and value[:1] in _FIRST and value.lstrip("'")[:1] in _FORMULA_START:
        return "'" + value
    return value


def cells(values: Iterable[object]) -> list[object]:
    return [cell(value) for value in values]
