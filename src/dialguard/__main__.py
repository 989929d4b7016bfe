"""`python -m dialguard`: the `dialguard` command (how `serve` starts its shipper)."""

from dialguard.cli import main

main()
