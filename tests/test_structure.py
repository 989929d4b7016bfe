"""The shape of the package: no import cycle, every Redis key named in store/ alone, and
the rules table that docs/rules.md mirrors."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dialguard import policy
from dialguard.store import facts, keys, lists

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "src" / "dialguard"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports at load time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # imports for the type checker only never run
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # A package's __init__ importing its own modules is no cycle (each runs after the
    # package exists); a module importing a name from its package's __init__ is one.
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_import_cycle_in_the_package() -> None:
    graph = _graph()
    assert "dialguard.store.store" in graph and "dialguard.cli.common" in graph
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


# Fragments only a Redis key of ours would hold (docs/data-model.md, store/keys.py).
KEY_FRAGMENTS = re.compile(r"dnc:live|lists:(seq|lock|building|unlisted|seen)|\batt:|:idx\b|:why\b")
# How code outside the store would reach the configured key prefix to build a key.
KEY_PREFIX = re.compile(r"\bPREFIX\b|\b_prefix\b|redis\.prefix\b")


def _key_like(path: Path) -> list[tuple[int, str]]:
    """String literals holding a key fragment, and strings built from a key prefix."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if KEY_FRAGMENTS.search(node.value) and " " not in node.value:
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr | ast.BinOp):
            text = ast.unparse(node)
            if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.Add):
                continue
            if KEY_PREFIX.search(text):
                found.append((node.lineno, text))
    return found


def test_no_redis_key_is_named_outside_the_store() -> None:
    outside = [
        path
        for folder in (PACKAGE, ROOT / "bench", ROOT / "scripts")
        for path in folder.rglob("*.py")
        if "store" not in path.relative_to(folder).parts[:1]
    ]
    assert len(outside) > 20
    named = [
        f"{path.relative_to(ROOT)}:{line}: {text[:60]!r}"
        for path in outside
        for line, text in _key_like(path)
        if text != keys.LIVE_DNC_LIST
    ]
    assert named == []


def test_the_key_check_sees_a_key(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        'A = "dialguard:lists:lock:dnc"\nB = PREFIX + "lists"\nC = f"{self._prefix}att:{p}"\n'
        'D = "do-not-call during campaign"\nE = "refusal"\n'
    )
    assert sorted({line for line, _ in _key_like(source)}) == [1, 2, 3]


LUA_SCRIPTS = [
    facts.FACTS,
    *(value for name, value in vars(lists).items() if name.isupper() and name.startswith("_")),
]


@pytest.mark.parametrize("script", [s for s in LUA_SCRIPTS if isinstance(s, str)])
def test_scripts_spell_no_key(script: str) -> None:
    """A key format exists once, in keys.py: the scripts get keys, formats and parts."""
    body = script.replace(keys.LUA_PARTS, "").replace(facts.LUA_LIST_FIELDS, "")
    literals = re.findall(r"'([^']*)'", body)
    assert [text for text in literals if ":" in text or text in ("dnc", "idx", "why")] == []


def test_the_key_names_are_the_documented_layout() -> None:
    documented = (ROOT / "docs" / "data-model.md").read_text(encoding="utf-8")
    names = keys.Keys("P ")
    for key in (
        names.index,
        names.dnc_live,
        names.dnc_principal,
        names.withdrawal,
        names.refusal,
        names.cancelled,
        names.applied,
        names.attempts("PRINCIPAL", "NUMBER"),
        names.seq,
        names.building,
        names.lock("KIND"),
        names.unlisted("V"),
        names.consent_live,
        names.contract_live,
        names.principals,
        names.packed("consent", "V") + "LNUMBER",
        names.packed("contract", "V") + "LNUMBER",
        names.packed("consent", "V") + keys.INDEX,
        names.packed("consent", "V") + keys.OVERFLOW,
        names.reply("DIGEST"),
        keys.bucket_set(names.base("dnc", "V"), "BUCKET"),
        keys.bucket_bitmap(names.base("dnc", "V"), "BUCKET"),
        names.base("dnc", "V") + keys.INDEX,
        names.base("dnc", "V") + keys.WHY,
    ):
        assert f"`{key}`" in documented, key


def test_a_prefix_with_a_percent_sign_keeps_its_keys() -> None:
    names = keys.Keys("100%:")
    assert names.base("dnc", "7") == "100%:dnc:7:"
    assert names.base_format("dnc") == "100%%:dnc:%s:"  # the scripts' string.format


# --- the rules table and docs/rules.md ------------------------------------------------------

_ROW = re.compile(r"^\| (\d+) \| `([a-z_]+)` \| .* \| (yes|no) \| ([^|]+) \|$")


def _documented_rules() -> list[tuple[str, bool, str]]:
    text = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    return [
        (m.group(2), m.group(3) == "yes", m.group(4).strip())
        for line in text.splitlines()
        if (m := _ROW.match(line))
    ]


def test_docs_list_every_rule_in_order_with_its_source() -> None:
    table = [(rule.name, rule.needs_facts, rule.source) for rule in policy.RULES]
    assert _documented_rules() == table


def test_rules_that_need_no_facts_read_none() -> None:
    """A rule marked needs_facts=False that read them would change when an attempt's
    slot is reserved: `prepare` refuses it."""
    from datetime import UTC, datetime

    from dialguard.config import load_config
    from dialguard.numbers import normalise

    config = load_config(ROOT / "config" / "dialguard.toml")
    campaign = config.campaigns["demo-prospecting"]
    number = normalise("0612345678")
    monday = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    assert policy.prepare(campaign, number, monday, config.policy).would_count

    broken = tuple(
        policy.Rule(r.name, r.source, False, r.check) if r.name == "internal_dnc" else r
        for r in policy.RULES
    )
    with pytest.raises(policy.RuleNeedsFacts, match="internal_dnc"):
        policy.prepare(campaign, number, monday, config.policy, rules=broken)
