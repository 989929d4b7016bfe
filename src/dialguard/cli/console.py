"""`dialguard console`: the supervisors' console in a browser, and its users
(docs/console.md)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import orjson

from dialguard.cli.common import Failure, config_option, configure_logging, errors_are_one_line
from dialguard.cli.common import at as common_at
from dialguard.config import console_settings, load_config

__all__ = ["console"]


@click.group("console", invoke_without_command=True)
@click.option("--host", default=None, help="Listen here (default: [console] host, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Default: [console] port, 8574."
)
@click.option("--at", default=None, hidden=True)  # "now" for Today (the docs' screenshots)
@config_option
@click.pass_context
@errors_are_one_line
def console(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    at: str | None,
    config_path: Path | None,
) -> None:
    """Serve the console (pages in a browser, read from the central store and Redis)
    until SIGTERM; `console user ...` manages who may log in."""
    if ctx.invoked_subcommand is not None:
        return
    from dialguard.console.server import serve_console  # keeps the other commands light

    config = load_config(config_path)
    moment = common_at(at, config) if at is not None else None
    configure_logging(logging.INFO)
    sys.exit(serve_console(config, host, port, moment))


@console.group("user")
def user() -> None:
    """The console's users (a file; the console reads it again when it changes)."""


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "compliance"]),
    required=True,
    help="viewer: figures and searches, numbers masked in lists; compliance: also exports.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input (for scripts).",
)
@click.option("--replace", is_flag=True, help="Give an existing user this role and password.")
@config_option
@errors_are_one_line
def add_command(
    name: str, role: str, password_stdin: bool, replace: bool, config_path: Path | None
) -> None:
    """Add a user who may log in to the console (the password is asked for, twice)."""
    from dialguard.console.users import BadUsers, Role, add_user, check_name, check_password

    settings = console_settings(load_config(config_path))
    try:
        check_name(name)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt(
                f"Password for {name}", hide_input=True, confirmation_prompt=True, err=True
            )
        check_password(password)
        added = add_user(settings.users_file, name, Role(role), password, replace=replace)
    except BadUsers as exc:
        raise Failure(str(exc)) from None
    click.echo(f"{added.name}: {added.role.value}, in {settings.users_file}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per user.")
@config_option
@errors_are_one_line
def list_command(as_json: bool, config_path: Path | None) -> None:
    """The console's users and their roles (never their hashes)."""
    from dialguard.console.users import BadUsers, read_users

    settings = console_settings(load_config(config_path))
    try:
        users = read_users(settings.users_file)
    except BadUsers as exc:
        raise Failure(str(exc)) from None
    for item in sorted(users.values(), key=lambda u: u.name):
        if as_json:
            shown = {"name": item.name, "role": item.role.value, "created": item.created}
            click.echo(orjson.dumps(shown).decode())
        else:
            click.echo(f"{item.name}\t{item.role.value}\tsince {item.created}")
    if not users and not as_json:
        click.echo(f"no console user in {settings.users_file}")


@user.command("remove")
@click.argument("name")
@config_option
@errors_are_one_line
def remove_command(name: str, config_path: Path | None) -> None:
    """Remove a user: their sessions end at their next request."""
    from dialguard.console.users import BadUsers, remove_user

    settings = console_settings(load_config(config_path))
    try:
        remove_user(settings.users_file, name)
    except BadUsers as exc:
        raise Failure(str(exc)) from None
    click.echo(f"{name}: removed from {settings.users_file}")
