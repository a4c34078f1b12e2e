"""Nothing written is silently lost: JSONL records past a damaged line, and model directories
whose save was killed."""

import json
import os

import pytest

from agentark_utils import models
from agentark_utils.store import CorruptJSONLError, append_jsonl, read_jsonl, rewrite_jsonl, write_json


def test_jsonl_survives_a_torn_line_and_json_writes_are_atomic(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with path.open("ab") as f:
        f.write(b'{"a": 3')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes().endswith(b'{"a": 3')  # reading alone does not modify
    read_jsonl(path, repair=True)
    append_jsonl(path, [{"a": 4}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    rewrite_jsonl(path, [{"b": 1}])
    assert read_jsonl(path) == [{"b": 1}]
    write_json(tmp_path / "m.json", {"x": 1})
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unparsable_last_line_with_its_newline_is_torn_too(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n')
    assert read_jsonl(path) == [{"a": 1}]
    read_jsonl(path, repair=True)
    assert path.read_bytes() == b'{"a": 1}\n'


@pytest.mark.parametrize("bad", [b'{"a": 2\n', b"\xff\xfe\n", b"\n"])
def test_a_corrupt_line_before_the_last_is_an_error_not_the_end_of_the_file(tmp_path, bad):
    path = tmp_path / "r.jsonl"
    content = b'{"a": 1}\n' + bad + b'{"a": 3}\n{"a": 4}\n'
    path.write_bytes(content)
    for repair in (False, True):
        with pytest.raises(CorruptJSONLError, match=rf"{path}, line 2: not a JSON record") as caught:
            read_jsonl(path, repair=repair)
        assert isinstance(caught.value, ValueError) and caught.value.line == 2
        assert path.read_bytes() == content  # repair cuts torn tails only: records 3 and 4 stay on disk


def test_a_missing_file_is_an_error_not_an_empty_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_jsonl(tmp_path / "nothing.jsonl")


class FakeSaver:
    """Stands in for a model or tokenizer: `save_pretrained` writes one file that names a version."""

    def __init__(self, filename: str, version: int):
        self.filename, self.version = filename, version

    def save_pretrained(self, directory, state_dict=None):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, self.filename), "w") as f:
            json.dump({"version": self.version}, f)


def save(out, version):
    return models.save_atomically(FakeSaver("config.json", version), FakeSaver("tokenizer.json", version), out)


class Killed(BaseException):
    """A kill: no `except Exception` handler can catch it and tidy up."""


def save_killed_at_the_swap(out, version, monkeypatch):
    """Kill a save just after the new model is complete, as it is about to take out's place."""
    rename = os.rename

    def killed(src, dst, *args, **kwargs):
        if str(src).endswith(".partial"):
            raise Killed
        return rename(src, dst, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", killed)
        patch.setattr(os, "replace", killed)
        with pytest.raises(Killed):
            save(out, version)


def version(out):
    return [json.loads((out / name).read_text())["version"] for name in ("config.json", "tokenizer.json")]


def test_a_save_killed_while_swapping_directories_leaves_a_loadable_model(tmp_path, monkeypatch):
    out = tmp_path / "student"
    save(out, 1)
    save_killed_at_the_swap(out, 2, monkeypatch)
    # every load goes through resolve: it finds the previous model, whole
    assert models.resolve(str(out)) == str(out) and version(out) == [1, 1]
    save(out, 3)
    assert version(out) == [3, 3] and [p.name for p in tmp_path.iterdir()] == ["student"]


def test_the_next_save_also_restores_the_model_a_killed_save_set_aside(tmp_path, monkeypatch):
    out = tmp_path / "student"
    save(out, 1)
    save_killed_at_the_swap(out, 2, monkeypatch)
    save_killed_at_the_swap(out, 3, monkeypatch)  # had this save dropped the set-aside model, none would be left
    assert models.resolve(str(out)) == str(out) and version(out) == [1, 1]


def test_write_json_writes_nan_as_null(tmp_path):
    """JSON has no NaN: a metric that could not be computed is null, which DVC can read."""
    import json

    write_json(tmp_path / "m.json", {"accuracy": float("nan"), "ci": [0.1, float("inf")], "n": 3})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": None, "ci": [0.1, None], "n": 3}
