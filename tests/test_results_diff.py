"""results_diff: two results trees compared apart from timings and fingerprints."""

import json

import pytest

from agentark_utils.results_diff import is_run_stamp, main, results_differences


@pytest.mark.parametrize("key, stamp", [
    ("wall_s", True), ("latency_s", True), ("tok_per_s", True), ("total_s", True), ("rollout_tok_per_s", True),
    ("fingerprint", True), ("run_fingerprint", True), ("seconds", True),
    ("n_steps", False), ("prompts_seen", False), ("frac_groups_nonzero_std", False), ("accuracy", False),
    ("completion_tokens", False), ("status", False),
])
def test_run_stamps_are_timings_and_fingerprints_only(key, stamp):
    assert is_run_stamp(key) == stamp


def write_tree(root, accuracy=0.25, wall_s=1.0, order=(0, 1), text="4 + 1 = 5", csv_value="0.25", latency="0.1"):
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "metrics.json").write_text(json.dumps(
        {"headline": {"accuracy": accuracy, "wall_s": wall_s, "n_steps": 3}, "fingerprint": str(wall_s)}))
    rows = [{"id": "q0", "text": text, "latency_s": latency}, {"id": "q1", "text": "2", "latency_s": latency}]
    (root / "eval" / "predictions.jsonl").write_text("".join(json.dumps(rows[i]) + "\n" for i in order))
    (root / "eval" / "accuracy.csv").write_text(f"model,accuracy,wall_s\nbase,{csv_value},{latency}\n")
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "stages.json").write_text(json.dumps({"debate": wall_s}))


def test_timings_fingerprints_row_order_and_benchmarks_are_not_differences(tmp_path):
    write_tree(tmp_path / "old")
    write_tree(tmp_path / "new", wall_s=9.0, order=(1, 0), latency="0.7")
    assert results_differences(tmp_path / "old", tmp_path / "new") == ({}, 3)
    assert main([str(tmp_path / "old"), str(tmp_path / "new")]) == 0


def test_a_changed_result_is_named_with_its_place(tmp_path, capsys):
    write_tree(tmp_path / "old")
    write_tree(tmp_path / "new", accuracy=0.3, text="4 + 1 = 6", csv_value="0.3")
    (tmp_path / "new" / "eval" / "extra.json").write_text("{}")
    found, compared = results_differences(tmp_path / "old", tmp_path / "new")
    assert compared == 4
    assert found["eval/metrics.json"] == [".headline.accuracy: 0.25 -> 0.3"]
    assert found["eval/extra.json"] == ["only in new"]
    assert "1 row(s) only in old, 1 only in new" in found["eval/predictions.jsonl"][0]
    assert "1 row(s) only in old, 1 only in new" in found["eval/accuracy.csv"][0]
    assert main([str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    assert "4 files compared" in capsys.readouterr().out


def test_a_wrong_call_is_a_usage_message(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "usage" in capsys.readouterr().err
