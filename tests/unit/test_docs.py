"""The documentation site (docs/, mkdocs.yml) stays true to the code.

- the site builds with ``mkdocs build --strict`` (broken links, anchors and includes fail);
- docs/reference/ is exactly what worker/devtools/reference.py renders from the code;
- every JSON example validates against schemas/ (events, batches, decisions, dead letters),
  and the Python backend snippet, run against a stand-in producer, publishes valid events;
- the worked examples on decisions/examples.md go through the real window engine and the
  delivery merge and give the decisions and the Helicone call the page shows;
- every ``feedback-worker ...`` and ``make ...`` line names real commands, options and targets;
- hand-written settings tables, metric and alert names agree with the code and deploy/.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, get_args

import click
import jsonschema
import orjson
import pytest

from tests.unit.rules.eventkit import Run, drain, engine
from worker.cli import main as cli_main
from worker.config import Settings
from worker.delivery import DEAD_LETTER_REASONS
from worker.delivery_state import FeedbackState, calls_for, merge
from worker.devtools import reference
from worker.events import EVENT_TYPES, UI_EVENT_ADAPTER
from worker.validation import Accepted, InvalidReason

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCHEMAS = ROOT / "schemas"
#: Pages written by hand (the generated reference is checked by comparison instead).
HAND_WRITTEN = sorted(p for p in DOCS.rglob("*.md") if "reference" not in p.parts)
ALL_TEXT = [*HAND_WRITTEN, ROOT / "README.md"]

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def _check_dataset_line(obj: dict[str, Any]) -> None:
    """A documented ``dataset --jsonl`` line has the fields and types selection_line writes."""
    from worker.datasets import RequestOutcome, selection_line

    sample = selection_line(RequestOutcome(
        request_id=obj["request_id"], rating=obj["rating"], rating_rule=obj["rating_rule"],
        scores=obj["scores"], rules=frozenset(obj["rules"]), last_window_end_ms=0,
        decision_ids=tuple(obj["decision_ids"]),
    ))
    assert set(obj) == set(sample), sorted(obj)
    assert obj["rating"] is None or isinstance(obj["rating"], bool)
    assert all(isinstance(v, int) for v in obj["scores"].values())
    assert obj["rules"] == sorted(obj["rules"])
    assert obj["decision_ids"] == sorted(obj["decision_ids"])
    datetime.fromisoformat(obj["last_window_end"])


def _blocks(path: Path, *languages: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [body for lang, body in _FENCE.findall(text) if lang in languages]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------------------- the site


def test_site_builds_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,  # snippets (--8<--) are included relative to the repository root
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    assert (tmp_path / "index.html").exists()
    for page in tmp_path.rglob("*.html"):
        # the theme must not fetch web fonts (theme.font: false): nothing may download
        assert "fonts.googleapis.com" not in page.read_text(encoding="utf-8"), page


def test_generated_reference_matches_the_code() -> None:
    for name, text in reference.render_all().items():
        path = DOCS / "reference" / name
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        diff = "".join(
            list(difflib.unified_diff(committed.splitlines(True), text.splitlines(True)))[:40]
        )
        assert committed == text, f"{_name(path)} is out of date: run `make docs-reference`\n{diff}"


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [
        str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in nav
    ]
    assert not missing


# ---------------------------------------------------------------------- JSON examples


@cache
def _schema(path: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / path).read_text(encoding="utf-8"))
    return loaded


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(instance)


def _validate_event(event: dict[str, Any]) -> None:
    assert event.get("type") in EVENT_TYPES, f"unknown event type {event.get('type')!r}"
    _validate(event, _schema(f"events/{event['type']}.schema.json"))
    UI_EVENT_ADAPTER.validate_json(orjson.dumps(event))  # and the worker's own models


def _check_json_example(obj: dict[str, Any]) -> None:
    """Validate one JSON object from the docs by what it is; unknown shapes fail."""
    decision_schema = _schema("decision.schema.json")
    keys = set(obj)
    if "events" in obj:  # a collector batch
        for event in obj["events"]:
            _validate_event({"sent_at": obj.get("sent_at"), **event} if "sent_at" in obj else event)
    elif {"event_id", "type", "occurred_at"} <= keys:
        _validate_event(obj)
    elif {"decision_id", "rule"} <= keys:
        _validate(obj, decision_schema)
    elif "rule" in keys:  # the fields of a decision that matter, on the worked examples
        assert keys <= set(decision_schema["properties"]), keys
        _validate(obj, {**decision_schema, "required": []})
    elif "dead_lettered_at" in keys:
        assert obj["reason"] in DEAD_LETTER_REASONS
        _validate(obj["decision"], decision_schema)
    elif {"reason", "source", "value_sha256"} <= keys:  # a record on ui-events-invalid
        assert obj["reason"] in get_args(InvalidReason)
    elif keys == {"scores"}:  # the body of a call to Helicone's /score
        assert all(isinstance(v, int) for v in obj["scores"].values())
    elif keys == {"rating"}:  # the body of a call to a /feedback endpoint
        assert isinstance(obj["rating"], bool)
    elif {"request_id", "rating_rule", "decision_ids"} <= keys:  # a `dataset --jsonl` line
        _check_dataset_line(obj)
    else:
        raise AssertionError(f"unrecognised JSON example: {sorted(keys)}")


def _json_objects(block: str) -> list[dict[str, Any]]:
    if "--8<--" in block:
        return []  # an included file (schemas/examples/all.jsonl): test_schemas checks it
    try:
        return [json.loads(block)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=_name)
def test_json_examples_validate(path: Path) -> None:
    for block in _blocks(path, "json"):
        for obj in _json_objects(block):
            _check_json_example(obj)


def test_python_backend_example_publishes_a_valid_event() -> None:
    """Run the aiokafka snippet of sending/backends.md against a stand-in producer."""
    (snippet,) = _blocks(DOCS / "sending" / "backends.md", "python")
    sent: list[tuple[str, bytes, bytes]] = []

    class Producer:
        async def send_and_wait(self, topic: str, *, key: bytes, value: bytes) -> None:
            sent.append((topic, key, value))

    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/sending/backends.md", "exec"), namespace)
    request_id = "5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f"
    asyncio.run(namespace["publish"](Producer(), request_id, "response_copied"))
    asyncio.run(namespace["publish"](Producer(), request_id, "feedback_given", rating=True))
    for topic, key, value in sent:
        assert (topic, key) == ("ui-events", request_id.encode())
        _validate_event(json.loads(value))


# ------------------------------------------------------------------- worked examples


def _example_sections() -> dict[str, str]:
    text = (DOCS / "decisions" / "examples.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (\w+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _path_of(state: FeedbackState, endpoint: str) -> str:
    return {
        "request_score": f"/v1/request/{state.target_id}/score",
        "request_feedback": f"/v1/request/{state.target_id}/feedback",
        "session_feedback": f"/v1/session/{state.target_id}/feedback",
    }[endpoint]


def test_there_is_a_worked_example_per_rule() -> None:
    from worker.rules import RULES

    assert set(_example_sections()) == set(RULES)


@pytest.mark.parametrize("rule", sorted(_example_sections()))
def test_worked_example_gives_what_the_page_shows(rule: str) -> None:
    section = _example_sections()[rule]
    events_block, decisions_block = [b for lang, b in _FENCE.findall(section) if lang == "json"]
    (calls_block,) = [b for lang, b in _FENCE.findall(section) if lang == "http"]

    eng, run = engine(), Run()
    for line in events_block.splitlines():
        document = json.loads(line)
        at_ms = int(datetime.fromisoformat(document["occurred_at"]).timestamp() * 1000)
        event = UI_EVENT_ADAPTER.validate_json(orjson.dumps(document))
        run.add(eng.process(Accepted(event, at_ms)))
    drain(eng, run)

    shown = [json.loads(line) for line in decisions_block.splitlines()]
    fields = set().union(*(set(d) for d in shown))
    got = [d.model_dump(mode="json", include=fields) for d in run.decisions]
    assert sorted(got, key=str) == sorted(shown, key=str)

    states: dict[str, FeedbackState] = {}
    for decision in run.decisions:
        key = f"{decision.target}:{decision.request_id or decision.session_id}"
        states[key], _ = merge(states.get(key), decision, now_ms=0)
    calls = [
        f"POST {_path_of(state, call.endpoint)}\n{json.dumps(call.body)}"
        for state in states.values()
        for call in calls_for(state)
    ]
    lines = [line for line in calls_block.splitlines() if line.strip()]
    shown_calls = [
        f"{lines[i]}\n{json.dumps(json.loads(lines[i + 1]))}" for i in range(0, len(lines), 2)
    ]
    assert calls == shown_calls


# ------------------------------------------------------------- commands in the docs


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def _shell_commands(path: Path) -> list[list[str]]:
    """Each simple command of the sh blocks, and each `feedback-worker ...` code span."""
    found: list[list[str]] = []
    for block in _blocks(path, "sh", "bash", "shell"):
        # comments off first (none of the snippets has a " #" inside quotes), then split on
        # newlines and operators outside quotes: a quoted argument may span lines (curl -d)
        source = re.sub(r"(^|\s)#.*$", "", block.replace("\\\n", " "), flags=re.M)
        lexer = shlex.shlex(source, posix=True, punctuation_chars=";&|\n")
        lexer.whitespace = " \t\r"
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if set(word) <= set(";&|\n"):
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
    text = path.read_text(encoding="utf-8")
    for span in re.findall(r"`(feedback-worker [^`]+)`", text):
        if not span.endswith("..."):  # "`feedback-worker ...`" names the command in prose
            found.append(shlex.split(" ".join(span.split())))
    for command in found:
        while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
            del command[0]  # environment assignments before the command
    return [c for c in found if c]


def _check_cli(args: list[str]) -> None:
    """Resolve subcommands and parse the options as click would, without running anything."""
    command: click.Command = cli_main
    parent = None
    path = ["feedback-worker"]
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"no command {' '.join([*path, name])!r}"
        # as click builds it: the group's context_settings (-h) reach its subcommands, and
        # click caches each command's help option, which the generated CLI page shows
        parent = click.Context(
            command, info_name=path[-1], parent=parent, **command.context_settings
        )
        command, path = command.commands[name], [*path, name]
    try:
        command.make_context(path[-1], rest, parent=parent)
    except click.exceptions.Exit:
        pass  # --help
    except click.BadParameter as exc:
        # a placeholder such as FILE.jsonl that does not exist here is fine; options are not
        if not isinstance(exc.param, click.Argument):
            raise


@pytest.mark.parametrize("path", ALL_TEXT, ids=_name)
def test_shell_snippets_name_real_commands(path: Path) -> None:
    targets = _make_targets()
    for command in _shell_commands(path):
        if command[0] == "feedback-worker":
            _check_cli(command[1:])
        elif command[0] == "make":
            for word in command[1:]:
                assert "=" in word or word in targets, f"{path}: no make target {word!r}"
        elif command[0] == "curl" and "-d" in command:  # a body posted to the collector
            _check_json_example(json.loads(command[command.index("-d") + 1]))


def test_the_snippet_checker_notices_a_wrong_option() -> None:
    with pytest.raises(click.UsageError):
        _check_cli(["dlq", "list", "--no-such-option"])
    with pytest.raises(AssertionError):
        _check_cli(["no-such-command"])
    _check_cli(["publish", "FILE.jsonl", "--no-validate"])


# ----------------------------------------------------- settings, metrics and alerts


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=_name)
def test_hand_written_defaults_match_settings(path: Path) -> None:
    """Rows like | `A`, `B` | `1`, `2` | ... under a header whose second column is default."""
    header_default = False
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if "|" in line else []
        if not cells:
            header_default = False
            continue
        if len(cells) > 1 and cells[1] == "default":
            header_default = True
            continue
        if not header_default or set(cells[0]) <= {"-", " "}:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        if not names or not all(n.lower() in Settings.model_fields for n in names):
            continue
        shown = re.findall(r"`([^`]*)`", cells[1])
        expected = [reference.setting_default(n) for n in names]
        assert shown == expected or (not shown and not any(expected)), (names, shown, expected)


def _exported_series() -> set[str]:
    page = (DOCS / "reference" / "metrics.md").read_text(encoding="utf-8")
    names = set(re.findall(r"^\| `(feedback_\w+)`", page, flags=re.M))
    return names | {n.removesuffix("_total") for n in names}


def test_metric_names_in_the_docs_exist() -> None:
    exported = _exported_series()
    for path in ALL_TEXT:
        for name in set(re.findall(r"\bfeedback_[a-z_]+", path.read_text(encoding="utf-8"))):
            if name in EVENT_TYPES or name in {"feedback_given", "feedback_dry_run"}:
                continue
            assert name in exported, f"{_name(path)}: no metric {name}"


def test_metric_labels_in_the_docs_are_the_exported_ones() -> None:
    page = (DOCS / "reference" / "metrics.md").read_text(encoding="utf-8")
    labels = {
        name: set(re.findall(r"`(\w+)`", cells))
        for name, cells in re.findall(r"^\| `(feedback_\w+)` \| \w+ \| ([^|]*) \|", page, re.M)
    }
    for path in ALL_TEXT:
        text = path.read_text(encoding="utf-8")
        for name, inside in re.findall(r"\b(feedback_[a-z_]+)\{([^}]*)\}", text):
            shown = {part.split("=")[0].strip() for part in inside.split(",")}
            assert shown <= labels[name], f"{_name(path)}: {name} has no label {shown}"


def test_alert_names_in_the_docs_exist() -> None:
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    defined = set(re.findall(r"- alert: (\w+)", alerts))
    for path in ALL_TEXT:
        for name in set(re.findall(r"\bFeedback[A-Z]\w+", path.read_text(encoding="utf-8"))):
            assert name in defined, f"{_name(path)}: no alert {name}"


def test_readme_links_point_at_files() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README links to missing {target}"
