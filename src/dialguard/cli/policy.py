"""`dialguard policy show|check`: the policy's versions, for compliance officers.

`show` prints the version in force on a date (today by default) and what it changes from
the version before it; `check FILE` reads a policy file as start-up and a reload would
(the same one-line errors), then says what it holds and what it would change on days
already begun, compared with the configured policy (docs/policy.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import orjson

from dialguard.cli.common import Failure, config_option, errors_are_one_line
from dialguard.config import ConfigError, load_config, load_policy
from dialguard.policy import VALUE_FIELDS, Policy, Version, differences, retroactive

__all__ = ["describe", "policy"]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@click.group("policy")
def policy() -> None:
    """The policy's versions by effective date: show, check."""


@policy.command("show")
@click.option("--at", "when", default=None, help="A date (2026-07-01) or date-time; default today.")
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A policy file (default: the configured one).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@config_option
@errors_are_one_line
def show_command(
    when: str | None, file: Path | None, as_json: bool, config_path: Path | None
) -> None:
    """The version in force on a date, and what differs from the version before it."""
    rules = load_policy(file) if file is not None else load_config(config_path).policy
    day = _day(when, rules)
    index = rules.index_at(day)
    version = rules.versions[index]
    before = rules.versions[index - 1] if index else None
    following = rules.versions[index + 1] if index + 1 < len(rules.versions) else None
    changed = differences(before, version) if before is not None else []
    if as_json:
        out = {
            "policy": rules.name,
            "hash": rules.hash,
            "at": day.isoformat(),
            "version": version.id,
            "title": version.title,
            "source": version.source,
            "until": following.id if following else None,
            "before_first_version": day < version.effective_from,
            "values": {name: _plain(getattr(version, name)) for name in VALUE_FIELDS},
            "previous": before.id if before else None,
            "changes": [
                {"value": name, "from": _plain(was), "to": _plain(now)}
                for name, was, now in changed
            ],
            "versions": [v.id for v in rules.versions],
            "notes": list(rules.notes),
        }
        click.echo(orjson.dumps(out).decode())
        return
    until = f"until {following.effective_from} (excluded)" if following else "with no end set"
    click.echo(f"policy {rules.name} (hash {rules.hash}) on {day}:")
    click.echo(f"  version {version.id} {_title(version)}, {until}")
    click.echo(f"  source: {version.source}")
    if day < version.effective_from:
        click.echo(f"  ({day} is before the first version: the first version answers)")
    for name in VALUE_FIELDS:
        click.echo(f"  {name} = {describe(getattr(version, name))}")
    if before is None:
        click.echo("  the first version: nothing before it")
    elif not changed:
        click.echo(f"  no value differs from version {before.id}")
    else:
        click.echo(f"  changes from version {before.id} {_title(before)}:")
        for name, was, now in changed:
            click.echo(f"    {name}: {describe(was)} -> {describe(now)}")
    click.echo("versions: " + ", ".join(_marked(v, v is version) for v in rules.versions))
    for note in rules.notes:
        click.echo(f"note: {note}", err=True)


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@config_option
@errors_are_one_line
def check_command(file: Path, as_json: bool, config_path: Path | None) -> None:
    """Validate a policy file as start-up would (exit 1 and one line when it is wrong);
    say what it changes on days already begun, compared with the configured policy."""
    rules = load_policy(file)
    notes = list(rules.notes)
    try:
        running: Policy | None = load_config(config_path).policy
    except ConfigError as exc:
        running = None
        notes.append(f"not compared with the configured policy: {exc}")
    zone = ZoneInfo(rules.default_timezone)
    today = datetime.now(UTC).astimezone(zone).date()
    past = retroactive(running, rules, today)
    if as_json:
        out = {
            "file": str(file),
            "valid": True,
            "policy": rules.name,
            "hash": rules.hash,
            "versions": [
                {"version": v.id, "title": v.title, "source": v.source} for v in rules.versions
            ],
            "compared_with": (
                {"policy": running.name, "hash": running.hash} if running is not None else None
            ),
            "in_the_past": past,
            "notes": notes,
        }
        click.echo(orjson.dumps(out).decode())
        return
    plural = "version" if len(rules.versions) == 1 else "versions"
    click.echo(
        f"{file}: valid: policy {rules.name}, hash {rules.hash}, {len(rules.versions)} {plural}"
    )
    for version in rules.versions:
        click.echo(f"  {version.id} {_title(version)} ({version.source})")
    if running is not None and running.hash == rules.hash:
        click.echo("the configured policy is this very file")
    for line in past:
        click.echo(f"in the past: {line}")
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _day(value: str | None, rules: Policy) -> date:
    zone = ZoneInfo(rules.default_timezone)
    if value is None:
        return datetime.now(UTC).astimezone(zone).date()
    try:
        if _DAY.match(value):
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Failure(
            f"--at {value!r} is not a date (2026-07-01) or date-time (2026-07-01T10:30)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(zone).date()


def _title(version: Version) -> str:
    return f'"{version.title}"' if version.title else ""


def _marked(version: Version, current: bool) -> str:
    return f"[{version.id}]" if current else version.id


def describe(value: Any) -> str:
    """A value of a version as a person reads it (hours as HH:MM, days by name)."""
    if isinstance(value, frozenset) and all(isinstance(v, int) for v in value):
        return ", ".join(_WEEKDAYS[d] for d in sorted(value)) or "none"
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ", ".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in value)
    if isinstance(value, frozenset | set):
        return ", ".join(sorted(str(v) for v in value)) or "none"
    if isinstance(value, Mapping):
        parts = [f"{k}: {describe(v)}" for k, v in sorted(value.items(), key=lambda kv: kv[0])]
        return "; ".join(parts) or "none"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(getattr(value, "value", value))


def _plain(value: Any) -> Any:
    """A value of a version as JSON."""
    if isinstance(value, frozenset) and all(isinstance(v, int) for v in value):
        return [_WEEKDAYS[d] for d in sorted(value)]
    if isinstance(value, frozenset | set):
        return sorted(str(v) for v in value)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return [[f"{a:%H:%M}", f"{b:%H:%M}"] for a, b in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, date | time):
        return value.isoformat()
    return getattr(value, "value", value)
