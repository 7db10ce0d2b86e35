"""Bad input, entry point: workflow files. Each corpus value (tests/faults/corpus.py) in each kind of place of a
workflow — its name and label, the cron schedule, activity names, Campaign tables and columns, CRM objects and
fields, filter values, file paths — is either taken or refused by `crmsync.workflow.model.load` with a
WorkflowError that names the file and the key and says what to fix (never a traceback, never the whole value).
Names are checked as crmsync.yaml checks them (tests/faults/test_bad_input_config.py)."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from crmsync.workflow import model
from tests.faults.corpus import TEXTS

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "examples/workflows/03-union-export-contacts.yaml").read_text())

SQL: Callable[[str], bool] = lambda v: "\x00" in v or len(v.encode()) > 63  # noqa: E731
STRICT: Callable[[str], bool] = lambda v: True  # noqa: E731 - none of the corpus is a CRM API name or a cron line
LABEL: Callable[[str], bool] = lambda v: "\x00" in v or len(v) > 100  # noqa: E731
ANY_TEXT: Callable[[str], bool] = lambda v: "\x00" in v or len(v) > 4000  # noqa: E731 - filter values
PATH: Callable[[str], bool] = lambda v: "\x00" in v or len(v) > 4096  # noqa: E731
PLACES: dict[str, Callable[[str], bool]] = {
    "name": LABEL, "label": LABEL, "schedule": STRICT, "activities.0.name": STRICT,
    "activities.0.table": SQL, "activities.0.columns.1": SQL, "activities.0.where.and.1.value": ANY_TEXT,
    "activities.3.object": STRICT, "activities.3.mapping.1.crm": STRICT, "activities.3.mapping.1.campaign": SQL,
    "activities.3.write_back": SQL, "activities.3.rejection_file": PATH,
}


def _with(path: str, value: Any) -> dict:
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize("kind", sorted(TEXTS))
@pytest.mark.parametrize("place", sorted(PLACES))
def test_each_bad_value_in_each_place_is_taken_or_refused_with_its_key(tmp_path: Path, place: str, kind: str) -> None:
    value = TEXTS[kind]
    file = tmp_path / "workflow.yaml"
    file.write_text(yaml.safe_dump(_with(place, value), allow_unicode=True))
    try:
        model.load(file)
    except model.WorkflowError as exc:
        message = str(exc)
        assert str(file) in message and place.split(".")[-1] in message, message
        assert len(message) < 2000 and "\x00" not in message
        refused = True
    else:
        refused = False
    assert refused == PLACES[place](value), f"{place} = {kind}: {'refused' if refused else 'taken'}"


def test_the_cli_names_the_key_without_a_traceback(tmp_path: Path) -> None:
    file = tmp_path / "workflow.yaml"
    file.write_text(yaml.safe_dump(_with("activities.0.table", TEXTS["NUL"])))
    result = subprocess.run([sys.executable, "-m", "crmsync", "workflow", "validate", str(file)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "activities.0.table" in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr
