"""The conda envs are real (issue 13, item 5): each envs/*.yaml lists exactly what its rules' code needs, pinned.

"What a rule's code needs" is found statically, per function: the rule's script (or, for a rule running
`bidsafe step STAGE`, the `bidsafe` command and that stage's function), and from it every bidsafe
function, class and module body it can reach (a name used in a reached function leads to that name's
definition; `from bidsafe.x import y` inside a function counts only when that function is reached, which is how
bidsafe.stages keeps each stage's imports apart); each reached module's top-level code counts whole (it runs on
import), with its package's __init__. Every third-party import met on the way must be provided by the rule's
env; every env package must be needed by one of its rules, as an import or as a program the rules run (TOOLS).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
RULES = ROOT / "workflow" / "rules"
ENVS = ROOT / "envs"

# Distributions a rule needs without importing them: programs it runs and data files it reads.
TOOLS = {
    "convert": {"dcm2niix": "dcm2bids runs it", "dcm2bids": "run as a program (bidsafe.convert)"},
    "gate_validator": {"bids-validator-deno": "the validator program (bidsafe.validate)"},
    "deface": {"pydeface": "its template and face mask are read; the fsl engine runs it"},
}
# pip names in import form (distribution names normalised as PEP 503 does)
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Rule:
    name: str
    env: Path
    # the code the job runs first: its script's source, or for `bidsafe step STAGE` the command's entry and
    # the stage's function, as a script importing them would
    entry: str


def step_entry(stage: str) -> str:
    from bidsafe.steps import STEPS

    module, function, options_from = STEPS[stage]
    names = ", ".join(n for n in (function, options_from) if n)
    return f"from bidsafe.cli import main\nfrom bidsafe.steps import cli_main\nfrom {module} import {names}\n"


def workflow_rules() -> list[Rule]:
    """Every rule with a `script:` or a `bidsafe step` shell command in workflow/rules/*.smk, with its `conda:`
    env (paths as the rule gives them)."""
    rules = []
    for smk in sorted(RULES.glob("*.smk")):
        blocks = re.split(r"^(?:rule|checkpoint) (\w+):\n", smk.read_text(encoding="utf-8"), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            script = re.search(r"^    script:\n\s+\"([^\"]+)\"", body, re.M)
            step = re.search(r"^    shell:\n\s+\"bidsafe step (\w+) ", body, re.M)
            if script is None and step is None:
                continue
            conda = re.search(r"^    conda:\n\s+\"([^\"]+)\"", body, re.M)
            assert conda, f"rule {name} runs bidsafe code but names no conda env"
            entry = (smk.parent / script.group(1)).read_text(encoding="utf-8") if script else step_entry(step[1])
            rules.append(Rule(name, (smk.parent / conda.group(1)).resolve(), entry))
    return rules


@dataclass
class Module:
    name: str
    tree: ast.Module
    defs: dict[str, ast.AST] = field(default_factory=dict)
    top: list[ast.stmt] = field(default_factory=list)
    # top-level imported names: local name -> (module, attribute or None)
    aliases: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def load(name: str, path: Path | None = None) -> Module:
    path = path or module_path(name)
    assert path is not None, name
    module = Module(name, ast.parse(path.read_text(encoding="utf-8")))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in module.tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            module.defs[node.name] = node
        else:
            module.top.append(node)
    module.aliases = imported_names(module.tree.body, package, top_level_only=True)
    return module


def absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def import_nodes(nodes: list[ast.stmt] | ast.AST, top_level_only: bool = False) -> list[ast.Import | ast.ImportFrom]:
    nodes = nodes if isinstance(nodes, list) else [nodes]
    if top_level_only:
        return [n for n in nodes if isinstance(n, ast.Import | ast.ImportFrom)]
    return [n for node in nodes for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]


def imported_names(nodes, package: str, top_level_only: bool = False) -> dict[str, tuple[str, str | None]]:
    names: dict[str, tuple[str, str | None]] = {}
    for node in import_nodes(nodes, top_level_only):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (alias.name if alias.asname else
                                                                    alias.name.split(".")[0], None)
        else:
            source = absolute(node, package)
            for alias in node.names:
                names[alias.asname or alias.name] = (source, alias.name)
    return names


def third_party(top: str) -> bool:
    return top not in sys.stdlib_module_names and top not in ("__future__", "bidsafe", "snakemake")


@cache
def needed_imports(entry: str) -> frozenset[str]:
    """Top-level names of every third-party module the entry code can import (see the module docstring)."""
    found: set[str] = set()
    done: set[tuple[str, str | None]] = set()
    todo: list[tuple[str, str | None]] = []

    def reach(module: str, attr: str | None) -> None:
        if not module.startswith("bidsafe"):
            if third_party(module.split(".")[0]):
                found.add(module.split(".")[0])
            return
        if attr is not None and module_path(f"{module}.{attr}"):
            module, attr = f"{module}.{attr}", None  # `from bidsafe.release import gates`: a module
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            if module_path(".".join(parts[:i])):
                todo.append((".".join(parts[:i]), None))
        if attr is not None:
            todo.append((module, attr))

    def visit(module: Module, nodes: list[ast.stmt] | ast.AST, package: str) -> None:
        local = {**module.aliases, **imported_names(nodes, package)}
        for node in import_nodes(nodes):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    reach(alias.name, None)
            else:
                for alias in node.names:
                    reach(absolute(node, package), alias.name)
        for node in (n for root in (nodes if isinstance(nodes, list) else [nodes]) for n in ast.walk(root)):
            if isinstance(node, ast.Name) and node.id in module.defs:
                todo.append((module.name, node.id))
            elif isinstance(node, ast.Name) and node.id in local and local[node.id][1] is not None:
                reach(*local[node.id])
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in local):
                source, attr = local[node.value.id]
                target = f"{source}.{attr}" if attr else source
                if target.startswith("bidsafe") and module_path(target):
                    reach(target, node.attr if node.attr in load(target).defs else None)

    script_module = Module("__main__", ast.parse(entry))
    visit(script_module, script_module.tree.body, "")
    while todo:
        unit = todo.pop()
        if unit in done:
            continue
        done.add(unit)
        module = load(unit[0])
        package = module.name if module_path(module.name).name == "__init__.py" else module.name.rpartition(".")[0]
        if unit[1] is None:
            visit(module, module.top, package)
        elif unit[1] in module.defs:
            visit(module, module.defs[unit[1]], package)
    return frozenset(found)


def env_packages(env: Path) -> dict[str, str]:
    """The env's packages (normalised name -> its line), conda and pip alike; python and pip themselves left out."""
    data = yaml.safe_load(env.read_text(encoding="utf-8"))
    lines: list[str] = []
    for entry in data["dependencies"]:
        if isinstance(entry, dict):
            lines += entry.get("pip", [])
        else:
            lines.append(entry)
    packages = {}
    for line in lines:
        match = NAME.match(line)
        assert match, f"{env.name}: unreadable entry {line!r}"
        if normalise(match.group(1)) not in ("python", "pip"):
            packages[normalise(match.group(1))] = line
    return packages


@cache
def installed_distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distributions_of(imports: frozenset[str]) -> set[str]:
    known = installed_distributions()
    missing = sorted(name for name in imports if name not in known)
    assert not missing, f"imported but not installed here, so its distribution is unknown: {missing}"
    return {normalise(known[name][0]) for name in imports}


RULE_LIST = workflow_rules()


def test_every_rule_running_bidsafe_code_was_found() -> None:
    names = {rule.name for rule in RULE_LIST}
    assert {"ingest", "pseudonymise", "harvest", "deid", "convert", "scrub", "deface", "qc", "assemble",
            "gate_validator", "gate_leak_scan", "gate_deface", "gate_consent", "publish", "report"} <= names


def test_the_analysis_follows_function_level_imports() -> None:
    """Sanity of the analysis itself: stages' deface imports reach SimpleITK; ingest's code does not."""
    deface = next(r for r in RULE_LIST if r.name == "deface")
    ingest = next(r for r in RULE_LIST if r.name == "ingest")
    assert {"SimpleITK", "nibabel", "numpy"} <= needed_imports(deface.entry)
    assert "SimpleITK" not in needed_imports(ingest.entry)
    assert "pydicom" in needed_imports(ingest.entry)


@pytest.mark.parametrize("rule", RULE_LIST, ids=lambda r: r.name)
def test_the_env_of_a_rule_provides_every_third_party_import_of_its_code(rule: Rule) -> None:
    provided = set(env_packages(rule.env))
    needed = distributions_of(needed_imports(rule.entry))
    assert not needed - provided, f"rule {rule.name}: {rule.env.name} lacks {sorted(needed - provided)}"
    tools = {normalise(t) for t in TOOLS.get(rule.name, {})}
    assert not tools - provided, f"rule {rule.name}: {rule.env.name} lacks the programs {sorted(tools - provided)}"


@pytest.mark.parametrize("env", sorted(ENVS.glob("*.yaml")), ids=lambda p: p.name)
def test_an_env_lists_only_what_its_rules_need_pinned_and_no_local_install(env: Path) -> None:
    rules = [r for r in RULE_LIST if r.env == env.resolve()]
    assert rules, f"{env.name}: no rule uses it"
    needed = set().union(*(distributions_of(needed_imports(r.entry)) for r in rules))
    needed |= {normalise(t) for r in rules for t in TOOLS.get(r.name, {})}
    packages = env_packages(env)
    # bidsafe itself comes from the env's post-deploy script (README: --sdm conda), never as a path here
    assert not needed ^ set(packages), f"{env.name}: extra {sorted(set(packages) - needed)}, " \
                                       f"missing {sorted(needed - set(packages))}"
    text = env.read_text(encoding="utf-8")
    assert "-e " not in text and "../" not in text and "file:" not in text
    for name, line in packages.items():
        pinned = re.search(r"==\s*([\w.]+)\s*$|=\s*([\w.]+)\s*$", line)
        assert pinned, f"{env.name}: {line!r} is not pinned to one version"
        # the pin is the version the tests here run with (pip names; conda-forge packages pinned the same)
        assert (pinned.group(1) or pinned.group(2)) == version(name), f"{env.name}: {line!r} vs {version(name)}"


def test_python_is_pinned_to_the_version_bidsafe_is_tested_with() -> None:
    for env in sorted(ENVS.glob("*.yaml")):
        data = yaml.safe_load(env.read_text(encoding="utf-8"))
        pythons = [e for e in data["dependencies"] if isinstance(e, str) and e.startswith("python")]
        assert pythons == ["python=3.11"], env.name  # pyproject's requires-python floor, CI's interpreter


def test_every_env_installs_bidsafe_itself_and_names_its_version() -> None:
    """bidsafe comes into each env through the same post-deploy script (no relative path, no dependencies);
    the env file names bidsafe's version, so a new bidsafe gets new envs (Snakemake keys an env by its files)."""
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (current,) = re.findall(r'^version = "([^"]+)"', project, re.M)
    scripts = {}
    for env in sorted(ENVS.glob("*.yaml")):
        script = env.with_name(f"{env.stem}.post-deploy.sh")
        assert script.is_file(), f"{env.name}: no {script.name}"
        scripts[script.name] = script.read_bytes()
        assert env.read_text(encoding="utf-8").startswith(f"# bidsafe {current}:"), env.name
    assert len(set(scripts.values())) == 1, sorted(scripts)
    text = next(iter(scripts.values())).decode()
    assert "--no-deps" in text and "BIDSAFE_SOURCE" in text
