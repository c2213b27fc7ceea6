"""``feedback-worker dataset``'s own pieces: the state file and the argument checks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from worker.cli import main
from worker.commands.dataset import DatasetState, _load_state, _save_state, state_path

US = "https://api.helicone.ai"
EU = "https://eu.api.helicone.ai"


def test_one_state_file_per_name_and_base_url(tmp_path: Path) -> None:
    paths = {
        state_path(str(tmp_path), "good", US),
        state_path(str(tmp_path), "good", EU),
        state_path(str(tmp_path), "Good", US),
        state_path(str(tmp_path), "../../etc/passwd", US),
    }
    assert len(paths) == 4
    assert all(p.parent == tmp_path / "datasets" for p in paths)


def test_the_state_file_round_trips_and_is_written_whole(tmp_path: Path) -> None:
    path = state_path(str(tmp_path), "good", US)
    assert _load_state(path, "good", US) is None
    _save_state(path, DatasetState(name="good", base_url=US, dataset_id="d-1"))
    _save_state(path, DatasetState(name="good", base_url=US, dataset_id="d-2"))
    assert _load_state(path, "good", US) == "d-2"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_a_state_file_for_another_name_or_a_broken_one_is_ignored(tmp_path: Path) -> None:
    path = state_path(str(tmp_path), "good", US)
    _save_state(path, DatasetState(name="other", base_url=US, dataset_id="d-1"))
    assert _load_state(path, "good", US) is None
    path.write_text("{not json")
    assert _load_state(path, "good", US) is None


def test_bad_arguments_are_refused_before_anything_is_read() -> None:
    runner = CliRunner()
    for args in (["--min-score", "x=0.5"], ["--since", "soon"], ["--rule", "nope"],
                 ["--batch-size", "0"], ["--rating", "maybe"], ["--dataset-id", "ds-1"]):
        result = runner.invoke(main, ["dataset", "--name", "n", *args])
        assert result.exit_code == 2, (args, result.output)
    blank = runner.invoke(main, ["dataset", "--name", "  "])
    assert blank.exit_code == 2 and "1 to 200 characters" in blank.output
