"""The config schema: unknown keys refused at every level, one-line errors, the README generated from it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bidsafe.bidsnames import is_label
from bidsafe.cli import main as bidsafe_main
from bidsafe.config import check_config, config_docs, config_problems, load_schema, schema_defaults
from bidsafe.errors import ConfigError
from bidsafe.pseudonymise.settings import STAGE_KEYS
from bidsafe.release.assemble import release_config

ROOT = Path(__file__).resolve().parents[2]
BASE = {"inbox": "i", "work_dir": "w", "private_dir": "p", "release_dir": "r"}


def _objects(node: dict, path: str = "") -> list[tuple[str, dict]]:
    """Every object-typed schema node with its dotted path (`<name>` for a free mapping key)."""
    found = []
    types = node.get("type", [])
    if "object" in (types if isinstance(types, list) else [types]):
        found.append((path, node))
    for key, sub in node.get("properties", {}).items():
        found += _objects(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("additionalProperties"), dict):
        found += _objects(node["additionalProperties"], f"{path}.<name>")
    return found


def _shipped_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))


def test_committed_readme_is_the_one_generated_from_the_schema():
    committed = (ROOT / "config" / "README.md").read_text(encoding="utf-8")
    assert committed == config_docs(), "run `bidsafe config-docs --write config/README.md`"


def test_every_key_is_documented_with_type_default_allowed_and_meaning():
    text = config_docs()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+)` \|.*\|$", text, re.MULTILINE)}
    for path, node in _objects(load_schema()):
        for key in node.get("properties", {}):
            name = f"{path}.{key}" if path else key
            assert name in rows, f"{name} is missing from the generated README"
            cells = [c.strip() for c in rows[name].strip("|").split(" | ")]
            assert len(cells) == 5 and cells[1] and cells[4], f"{name}: type or meaning empty: {rows[name]}"
    assert "| `release.license` | text | `\"LicenseRef-bidsafe-DUA\"` | any licence identifier but" in text
    assert "| `deid.vocabulary` | list of text | `[]` |" in text
    assert "The four folders must be separate" in text  # the hand-written notes come from the schema


def test_every_object_level_refuses_unknown_keys():
    schema = load_schema()
    objects = _objects(schema)
    assert len(objects) >= 12
    for path, node in objects:
        assert node.get("additionalProperties") is not True and "additionalProperties" in node, path
    # And at run time: a typo planted in every fixed-key object of a valid config is named.
    for path, node in objects:
        if node.get("additionalProperties") is not False or "<name>" in path:
            continue
        config = _shipped_config()
        target = config
        for part in filter(None, path.split(".")):
            target = target.setdefault(part, {})
        target["zzz"] = "blue"
        problems = config_problems(config, schema)
        name = f"{path}.zzz" if path else "zzz"
        assert problems and problems[0].startswith(f"config: {name}: unknown key (allowed: "), (path, problems)


def test_a_typo_inside_release_is_one_line_naming_the_key_and_the_allowed_ones():
    config = {**BASE, "release": {"audiance": "named"}}
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    (line,) = str(caught.value).splitlines()
    assert line.startswith("config: release.audiance: unknown key (did you mean 'audience'?) (allowed: audience, ")
    assert "k_anonymity" in line and "license" in line


def test_a_public_domain_licence_says_why_in_one_line():
    for licence in ("CC0", "cc0-1.0", "Unlicense"):
        (line,) = config_problems({**BASE, "release": {"license": licence}})
        assert line.startswith(f"config: release.license: '{licence}' is not allowed: a public-domain dedication "
                               "waives every right, so it cannot carry the data usage agreement")
        assert line.endswith("(allowed: any licence identifier but a public-domain dedication: CC0, CC0-1.0, PD, "
                             "PDDL, PDDL-1.0, Unlicense (any case))")
        with pytest.raises(ConfigError, match="waives every right"):  # the library refuses it on its own too
            release_config({"release": {"license": licence}})
    assert config_problems({**BASE, "release": {"license": "CC-BY-4.0"}}) == []


def test_wrong_types_values_and_missing_keys_each_get_one_line():
    config = {"inbox": "i", "work_dir": "w", "private_dir": "p",
              "deid": {"jobs": "2"}, "release": {"audience": "everyone", "version": "next", "k_anonymity": 0,
                                                 "name": "", "k_anonymity_bins": []},
              "deface": {"suffixes": ["T1w_x"], "exempt": {"angio": " "}},
              "participants": {"columns": {"age": {"round_years": 1, "rounding": 2}}}}
    assert config_problems(config) == [
        "config: release_dir: missing (a required key)",
        "config: deface.exempt.angio: ' ' is not allowed: the reason must not be empty",
        "config: deface.suffixes[0]: 'T1w_x' is not allowed: a BIDS suffix holds only letters and digits",
        "config: deid.jobs: expected whole number, got text",
        "config: participants.columns.age.rounding: unknown key (allowed: description, gestational_age_column, "
        "levels, precision, range, source, table, top_code, unit, units, round_<unit> (years, months, weeks, days, "
        "kg, g, cm, m))",
        "config: release.audience: 'everyone' is not allowed (allowed: named, members, public, open)",
        "config: release.k_anonymity: 0 is not allowed (allowed: ≥ 1)",
        "config: release.k_anonymity_bins: [] is not allowed (allowed: items > 1, at least 1 item)",
        "config: release.name: '' is not allowed (allowed: non-empty text)",
        "config: release.version: 'next' is not allowed (allowed: auto or a whole number ≥ 1)",
    ]
    assert config_problems(None) == ["config: the configuration must be a mapping of keys (is the file empty?)"]


def test_labels_in_the_config_are_letters_and_digits_with_their_optional_prefix():
    """Every key that names a subject or session holds a label of letters and digits (bidsafe.bidsnames.LABEL)
    with its `sub-`/`ses-` prefix where the key allows one. The schema states this as a pattern per key so
    that any JSON Schema validator (Snakemake's `validate` too) enforces it without bidsafe's code."""
    template = {"name": "kids", "template": "t.nii.gz", "facemask": "f.nii.gz", "brainmask": "b.nii.gz"}
    good = {**BASE, "sessions": {"withhold": [{"subject": "sub-a7k2", "session": "ses-01", "reason": "review"},
                                              {"subject": "b9", "session": "02", "reason": "review"}]},
            "deface": {"templates": [{**template, "sessions": ["sub-a7k2", "sub-b9/ses-02"]}]}}
    assert config_problems(good) == []
    bad = {**BASE, "sessions": {"withhold": [{"subject": "sub-a_7", "session": "ses-0 1", "reason": "review"}]},
           "deface": {"templates": [{**template, "sessions": ["a7k2", "sub-b9/02", "sub-b9/ses-0+2"]}]}}
    problems = config_problems(bad)
    for path in ("sessions.withhold[0].subject: 'sub-a_7'", "sessions.withhold[0].session: 'ses-0 1'",
                 "deface.templates[0].sessions[0]: 'a7k2'", "deface.templates[0].sessions[1]: 'sub-b9/02'",
                 "deface.templates[0].sessions[2]: 'sub-b9/ses-0+2'"):
        assert any(line.startswith(f"config: {path}") for line in problems), (path, problems)
    assert len(problems) == 5, problems
    for label in ("sub-a7k2", "b9", "a7k2"):  # the schema's patterns and bidsnames agree
        assert is_label(label.removeprefix("sub-"))
    assert not is_label("a_7") and not is_label("0 1")


def test_the_shipped_config_is_valid_and_defaults_come_from_the_schema_at_every_level():
    config = check_config(_shipped_config())
    assert config["release"]["k_anonymity"] == 2  # given
    assert config["release"]["license"] == "LicenseRef-bidsafe-DUA"  # filled from the schema
    assert config["deid"]["vocabulary"] == [] and config["validator"] == {"backend": "deno"}
    bare = check_config(dict(BASE))
    assert bare["release"]["audience"] == "public" and bare["deface"]["exempt"] == {}
    # The release and consent stages take their defaults from the schema: changing it changes them.
    assert release_config({}) == {**schema_defaults("release"), "changes": []}
    bare["release"]["authors"].append("x")
    assert check_config(dict(BASE))["release"]["authors"] == []  # defaults are copies


def test_every_key_the_workflow_and_stages_read_is_in_the_schema():
    schema = load_schema()
    read: set[tuple[str, ...]] = set()
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text(encoding="utf-8")
        read |= {tuple(filter(None, m)) for m in re.findall(r'config\["(\w+)"\](?:\["(\w+)"\])?', text)}
        read |= {(m,) for m in re.findall(r'config\.get\("(\w+)"', text)}
        for names in re.findall(r"for k in \(([^)]*)\)", text):
            read |= {(n,) for n in re.findall(r'"(\w+)"', names)}
    # the pseudonymise stage reads its keys once, in bidsafe.pseudonymise.settings (the rule passes STAGE_KEYS)
    read |= {(k,) for k in STAGE_KEYS}
    stage = (ROOT / "src" / "bidsafe" / "pseudonymise" / "settings.py").read_text(encoding="utf-8")
    read |= {tuple(filter(None, m)) for m in re.findall(r'checked\["(\w+)"\](?:\["(\w+)"\])?', stage)}
    read |= {("release", m) for m in re.findall(r'release\["(\w+)"\]', stage)}
    read |= {("pseudonyms", m) for m in re.findall(r'pseudonyms\["(\w+)"\]', stage)}
    read |= {("release", key) for key in release_config({})}
    assert ("deface", "exempt") in read and ("release", "k_anonymity_bins") in read and ("consent",) in read
    for path in sorted(read):
        node = schema
        for part in path:
            assert part in node.get("properties", {}), f"config key {'.'.join(path)} is read but not in the schema"
            node = node["properties"][part]


def test_check_config_command_exit_codes(tmp_path, capsys):
    good = tmp_path / "site.yaml"
    good.write_text(yaml.safe_dump({**BASE, "release": {"audience": "members"}}))
    assert bidsafe_main(["check-config", str(good)]) == 0
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "release": {"audiance": "members", "license": "CC0"}}))
    assert bidsafe_main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "config: release.audiance: unknown key" in err and "config: release.license: 'CC0' is not allowed" in err
    assert len(err.strip().splitlines()) == 2
    (tmp_path / "broken.yaml").write_text("release: [\n")
    assert bidsafe_main(["check-config", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_config_docs_command_checks_and_writes(tmp_path, capsys):
    out = tmp_path / "README.md"
    assert bidsafe_main(["config-docs", "--check", str(out)]) == 1
    assert bidsafe_main(["config-docs", "--write", str(out)]) == 0
    assert bidsafe_main(["config-docs", "--check", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == (ROOT / "config" / "README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not on PATH")
def test_the_workflow_stops_on_a_typo_with_the_one_line_message(tmp_path):
    bad = tmp_path / "site.yaml"
    areas = {k: str(tmp_path / k) for k in ("inbox", "work_dir", "private_dir", "release_dir")}
    bad.write_text(yaml.safe_dump({**areas, "release": {"audiance": "named"}}))
    result = subprocess.run(
        [shutil.which("snakemake"), "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode != 0
    assert "config: release.audiance: unknown key (did you mean 'audience'?)" in result.stdout + result.stderr
    assert not (tmp_path / "private_dir").exists()  # stopped before anything was created


def test_deface_suffix_lists_name_only_suffixes_of_the_bids_schema():
    """The policy lists (deface.suffixes, deface.exempt) are checked against the official BIDS schema's suffixes
    (bidsschematools), not against a list kept here: a typo would otherwise silently deface or exempt nothing."""
    base = {"inbox": "i", "work_dir": "w", "private_dir": "p", "release_dir": "r"}
    assert config_problems({**base, "deface": {"suffixes": ["epi", "T2starw"], "exempt": {"angio": "MIP slab"}}}) == []
    assert config_problems({**base, "deface": {"suffixes": ["T1W"], "exempt": {"angiogram": "MIP slab"}}}) == [
        "config: deface.exempt: 'angiogram' is not allowed: not a suffix of the BIDS schema",
        "config: deface.suffixes[0]: 'T1W' is not allowed: not a suffix of the BIDS schema",
    ]


def test_data_areas_that_overlap_are_refused_by_one_test(tmp_path):
    """private_dir inside release_dir (or the same folder, or through a symbolic link) is refused; the drop
    folder and the pseudonymise output use the same test (bidsafe.private.areas_overlap)."""
    from bidsafe.private import areas_overlap, check_areas

    (tmp_path / "r").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "r")
    assert areas_overlap(tmp_path / "r" / "p", tmp_path / "r") and areas_overlap(tmp_path / "link", tmp_path / "r")
    assert not areas_overlap(tmp_path / "r", tmp_path / "r2")
    check_areas(tmp_path / "i", tmp_path / "p", tmp_path / "w", tmp_path / "r")
    with pytest.raises(ConfigError, match="'private_dir' .* and 'release_dir' .* overlap"):
        check_areas(tmp_path / "i", tmp_path / "link" / "p", tmp_path / "w", tmp_path / "r")
