"""Coverage-guided fuzzing of one target of tests/reliability/targets.py with atheris
(libFuzzer over Python's bytecode coverage):

    .venv/bin/python -m tests.reliability.fuzz TARGET [--seconds 600] [--corpus DIR]

The corpus (default .run/fuzz/TARGET, not committed) starts from the target's seeds and
keeps what reached new code, so a later run goes on from there. A crash (an exception
the target does not expect, or one input running longer than --timeout seconds: a hang)
stops the run with exit code 1 and leaves the input as .run/fuzz/crash-TARGET-*: turn it
into a case of REGRESSIONS in tests/reliability/test_fuzz.py once fixed. The last line
printed is one JSON object: target, seconds, runs, corpus files and bytes, coverage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / ".run" / "fuzz"
# Inputs as large as each reader meets: a config file is ~7 KB, an import line at most
# 4 KB (a few lines per input), an agi_* block under 16 KB with its replies.
MAX_LEN = {"config": 16384, "policy": 16384, "imports": 8192, "agi_parser": 20000}


def corpus_size(directory: Path) -> tuple[int, int]:
    files = [f for f in directory.iterdir() if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def run(target: str, seconds: int, corpus: Path, timeout: int) -> int:
    """Fuzz `target` in a child process (libFuzzer exits the process when done)."""
    corpus.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "tests.reliability.fuzz", "--child", target,
        str(corpus), f"-max_total_time={seconds}", f"-timeout={timeout}",
        f"-max_len={MAX_LEN.get(target, 4096)}", "-rss_limit_mb=2048",
        f"-artifact_prefix={RUN}/crash-{target}-", "-print_final_stats=1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    output = done.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s+(\d+)", output)
    coverage = re.findall(r"\bcov: (\d+) ft: (\d+)", output)
    files, size = corpus_size(corpus)
    crash = re.findall(r"Test unit written to (\S+)", output)
    summary = {
        "target": target,
        "seconds": seconds,
        "runs": int(runs[-1]) if runs else 0,
        "corpus_files": files,
        "corpus_bytes": size,
        "coverage": int(coverage[-1][0]) if coverage else 0,
        "features": int(coverage[-1][1]) if coverage else 0,
        "exit": done.returncode,
        "crash": crash[-1] if crash else None,
    }
    if done.returncode != 0:
        print(output[-4000:], file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0 if done.returncode == 0 else 1


def child(target: str, libfuzzer_args: list[str]) -> None:  # pragma: no cover - atheris
    import atheris

    # Comparisons of str guide it towards keys and keywords. Not its RegEx hook: it
    # breaks re.sub() with a compiled pattern (phonenumbers does that), a false crash.
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["dialguard"]):
        from tests.reliability.targets import TARGETS, seeds

    corpus = Path(libfuzzer_args[0])
    for seed in seeds()[target] if corpus.is_dir() else ():  # a file: replay that input
        name = "seed-" + hashlib.sha1(seed).hexdigest()[:16]
        if not (corpus / name).exists():
            (corpus / name).write_bytes(seed)
    atheris.Setup([sys.argv[0], *libfuzzer_args], TARGETS[target])
    atheris.Fuzz()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return 0
    from tests.reliability.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--timeout", type=int, default=5, help="seconds one input may take")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return run(args.target, args.seconds, args.corpus or RUN / args.target, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
