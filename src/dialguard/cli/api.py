"""`dialguard api token add|list|remove`: the bearer tokens of the HTTP API (`[api]
tokens_file`). A running service follows the file within a second: no reload needed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dialguard.api.tokens import SCOPES, BadTokens, add_token, read_tokens, remove_token
from dialguard.cli.common import (
    Failure,
    config_option,
    errors_are_one_line,
    operator_option,
)
from dialguard.config import load_config

__all__ = ["api"]


def _tokens_file(config_path: Path | None) -> Path:
    config = load_config(config_path)
    if config.api is None:
        raise Failure(f"{config.path}: no [api] section: the HTTP API is off (docs/api.md)")
    return config.api.tokens_file


@click.group()
def api() -> None:
    """The HTTP API (docs/api.md)."""


@api.group()
def token() -> None:
    """Bearer tokens: each with a name (who, in the audit records) and scopes."""


@token.command("add")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="What it may do (repeat): decide calls, write-lists (outcomes, do-not-call,"
    " consents, contracts), read-audit (a number's history).",
)
@operator_option
@config_option
@errors_are_one_line
def token_add(name: str, scopes: tuple[str, ...], operator: str, config_path: Path | None) -> None:
    """Make a token NAME and print it, once, alone on the last line: only its hash is kept."""
    path = _tokens_file(config_path)
    try:
        secret = add_token(path, name, scopes, operator)
    except (BadTokens, OSError) as exc:
        raise Failure(_message(exc, path)) from None
    click.echo(
        f"token {name!r} added to {path}, scopes {', '.join(sorted(set(scopes)))};"
        " in force within a second. It is shown once, now: keep it in the client's secrets."
    )
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per token.")
@config_option
@errors_are_one_line
def token_list(as_json: bool, config_path: Path | None) -> None:
    """The tokens on file: name, scopes, when and by whom made (never the token)."""
    path = _tokens_file(config_path)
    try:
        tokens = read_tokens(path)
    except BadTokens as exc:
        raise Failure(str(exc)) from None
    for entry in tokens:
        shown = {k: v for k, v in entry.as_json().items() if k != "sha256"}
        if as_json:
            click.echo(json.dumps(shown))
        else:
            click.echo(
                f"{entry.name}  {','.join(shown['scopes'])}  made {entry.created_at}"
                f" by {entry.created_by or '-'}"
            )
    if not tokens and not as_json:
        click.echo(f"no tokens in {path}")


@token.command("remove")
@click.argument("name")
@config_option
@errors_are_one_line
def token_remove(name: str, config_path: Path | None) -> None:
    """Revoke the token NAME: refused by the service within a second."""
    path = _tokens_file(config_path)
    try:
        remove_token(path, name)
    except (BadTokens, OSError) as exc:
        raise Failure(_message(exc, path)) from None
    click.echo(f"token {name!r} removed from {path}")


def _message(exc: Exception, path: Path) -> str:
    if isinstance(exc, OSError):
        return f"{path}: cannot write: {exc.strerror}"
    return str(exc)
