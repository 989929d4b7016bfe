"""The fuzz targets of tests/reliability/targets.py, two ways.

- In `make test`: every seed, every regression found so far, and a few hundred
  Hypothesis mutations of the seeds per target (its example database, .hypothesis/,
  keeps any failure it finds and replays it first next time).
- In `make test-reliability` (`-m long`): each target under atheris, coverage-guided,
  for DIALGUARD_FUZZ_SECONDS (600 by default) with its corpus under .run/fuzz/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.served import row
from tests.reliability.targets import TARGETS, seeds

ROOT = Path(__file__).resolve().parents[2]
SEEDS = seeds()

# Bytes the readers give meaning to: mutations splice them in.
TOKENS = [
    b"\n", b"\r\n", b"\n\n", b"\x00", b": ", b":", b"agi_arg_", b"agi_arg_1: ", b"HANGUP\n",
    b"200 result=1\n", b"520-", b"520 End of proper usage.\n", b"100 result=0 Trying...\n",
    b'"', b"\\", b",", b";", b"=", b"[", b"]", b"{", b"}", b"+33", b"0033", b"(0)", b"\xc3\xa9",
    b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"OK", b"INSCRIT", b"9999-12-31", b"+02:00",
    b"T", b"null", b"[]", b"{}", b"1e400", b'"args":', b'"channel":',
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    """A seed of `target` with up to eight edits: insertions (tokens or any bytes),
    deletions, replaced bytes, a slice repeated."""
    data = bytearray(draw(st.sampled_from(SEEDS[target])))
    for _ in range(draw(st.integers(0, 8))):
        where = draw(st.integers(0, len(data)))
        edit = draw(st.integers(0, 4))
        if edit == 0:
            data[where:where] = draw(st.sampled_from(TOKENS))
        elif edit == 1:
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif edit == 2:
            del data[where : where + draw(st.integers(1, 64))]
        elif edit == 3 and data:
            data[min(where, len(data) - 1)] = draw(st.integers(0, 255))
        else:
            piece = bytes(data[where : where + draw(st.integers(1, 256))])
            data[where:where] = piece * draw(st.integers(1, 200))
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_seed_passes(target: str) -> None:
    for seed in SEEDS[target]:
        TARGETS[target](seed)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_mutations(target: str) -> None:
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated(target))
    def run(data: bytes) -> None:
        TARGETS[target](data)

    run()


# --- what the fuzzers found ------------------------------------------------------------------

POLICY = (ROOT / "config" / "policy" / "france.toml").read_bytes()

# (target, input, what it did before the fix). Each is a minimal form of a crash found.
REGRESSIONS = [
    # atheris, policy, 2026-12-05: an hours window with a UTC offset ("20:00+02:00")
    # compared an aware time with a naive one: TypeError, a traceback for a config typo.
    (
        "policy",
        POLICY.replace(b'["14:00", "20:00"]', b'["14:00", "20:00+02:00"]'),
        "TypeError: can't compare offset-naive and offset-aware times",
    ),
]


@pytest.mark.parametrize(("target", "data", "before"), REGRESSIONS)
def test_regressions(target: str, data: bytes, before: str) -> None:
    assert data not in SEEDS[target]  # the edit took
    TARGETS[target](data)


# --- the long runs -----------------------------------------------------------------------------


@pytest.mark.long
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_with_atheris(target: str) -> None:
    seconds = int(os.environ.get("DIALGUARD_FUZZ_SECONDS", "600"))
    done = subprocess.run(
        [sys.executable, "-m", "tests.reliability.fuzz", target, "--seconds", str(seconds)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 300,
        check=False,
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    row(
        f"fuzz {target}",
        f"{summary['seconds']} s",
        f"{summary['runs']:,} runs",
        f"corpus {summary['corpus_files']} files, {summary['corpus_bytes']:,} bytes",
        f"coverage {summary['coverage']} edges, {summary['features']} features",
    )
    assert done.returncode == 0, done.stderr[-4000:]
