"""The project's wheel, built the way a release is: from a clean copy of what the sdist
holds (pyproject.toml, README.md, src/), so that nothing left in the working tree (a
`build/lib` of deleted modules, an egg-info) can slip into it or make it work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(dest: Path) -> Path:
    """dialguard's wheel (no dependencies) in `dest`; its path."""
    with_sources = dest / "source"
    shutil.copytree(
        ROOT / "src",
        with_sources / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, with_sources / name)
    for old in dest.glob("dialguard-*.whl"):
        old.unlink()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dest, with_sources],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(f"pip wheel exited {built.returncode}: {built.stderr[-2000:]}")
    shutil.rmtree(with_sources)
    (wheel,) = dest.glob("dialguard-*.whl")
    return wheel
