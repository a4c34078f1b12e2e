"""Nothing written is silently lost: JSONL records past a damaged line."""

import pytest

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
