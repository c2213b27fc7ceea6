"""The committed schemas/ must be exactly what the models generate (no drift)."""

from __future__ import annotations

from pathlib import Path

import orjson

from worker import schemas
from worker.events import UI_EVENT_ADAPTER

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    stale = schemas.check(SCHEMAS_DIR)
    assert not stale, f"regenerate with `make schemas`: {stale}"


def test_no_stray_files_in_schemas() -> None:
    expected = set(schemas.render())
    present = {
        str(p.relative_to(SCHEMAS_DIR)) for p in SCHEMAS_DIR.rglob("*") if p.is_file()
    }
    assert present == expected


def test_committed_examples_validate() -> None:
    lines = (SCHEMAS_DIR / "examples" / "all.jsonl").read_bytes().splitlines()
    assert len(lines) == 21
    for line in lines:
        UI_EVENT_ADAPTER.validate_json(line, strict=True)


def test_union_schema_lists_every_type() -> None:
    document = orjson.loads((SCHEMAS_DIR / "ui-event.schema.json").read_bytes())
    mapping = document["discriminator"]["mapping"]
    assert len(mapping) == 21
