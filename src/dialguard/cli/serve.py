"""`dialguard serve`: the FastAGI server (and the ARI app, the metrics endpoint)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from dialguard.cli.common import config_option, configure_logging, errors_are_one_line
from dialguard.config import load_config

__all__ = ["serve"]


@click.command()
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="Processes (default: config)."
)
@config_option
@errors_are_one_line
def serve(workers: int | None, config_path: Path | None) -> None:
    """Run the FastAGI server until SIGTERM (stops accepting, finishes sessions in flight)."""
    from dialguard.serve import serve as run  # imported here: keeps the other commands light

    config = load_config(config_path)
    configure_logging(logging.INFO)
    sys.exit(run(config, workers or config.server.workers))
