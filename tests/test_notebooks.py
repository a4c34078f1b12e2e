"""Each stage notebook, executed by Papermill on tiny parameters, writes what DVC expects."""

import json

import pytest
import yaml

from agentark_utils.stages import run_stage
from agentark_utils.tasks import load_task
from conftest import ROOT


def tiny_params(tmp_path, model_dir) -> str:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(teacher=str(model_dir), student=str(model_dir), dtype="float32", device="cpu", batch_size=8)
    params["data"].update(task="arith_mix", n_train=2, n_test=2, n_ood=2)
    params["debate"].update(n_agents=2, rounds=2, max_new_tokens=8, chunk_size=2)
    params["sft"].update(epochs=1, batch_size=4, bf16=False)
    params["evaluation"].update(max_new_tokens=8, bootstrap_samples=100)
    params["prm"].update(stage1_steps=2, stage2_steps=1, bf16=False)
    params["grpo"].update(group_size=2, batch_size=4, max_completion_length=8, bf16=False)  # 1 epoch = 1 step
    params["pad_validation"].update(n=3)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_debate_notebook(tmp_path, tiny_model_dir):
    out = tmp_path / "debate"
    executed = run_stage("debate", tiny_params(tmp_path, tiny_model_dir), out_dir=str(out))
    assert executed == out / "01_debate.ipynb"

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_questions"] == 6 and set(metrics["by_split"]) == {"train", "test", "ood:equations"}
    for system in ("single", "single_sampled", "self_consistency", "debate", "debate_majority"):
        m = metrics[system]
        assert set(m) >= {"accuracy", "ci95", "strict_accuracy", "unparsed_rate", "tokens_per_question",
                          "calls_per_question", "latency_s_per_question"}
        assert 0 <= m["accuracy"] <= 1 and m["ci95"][0] <= m["accuracy"] <= m["ci95"][1]
    assert metrics["single"]["calls_per_question"] == 1 and metrics["single"]["n"] == 6
    # self-consistency runs on the held-out splits only, with the debate's call budget of samples
    assert metrics["self_consistency"]["n"] == 4 and metrics["self_consistency"]["calls_per_question"] == 2 * 2 + 1
    assert 0 <= metrics["wrong_to_right_fraction"] <= 1

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    for name in ("accuracy_by_round.png", "cost_vs_accuracy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    env = json.loads((out / "environment.json").read_text())
    import torch
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert env["python"].count(".") == 2 and "time" not in json.dumps(env)

    nb = json.loads(executed.read_text())
    injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert str(tiny_model_dir) in "".join(injected["source"])
    assert any(o.get("output_type") == "display_data" for c in nb["cells"] for o in c.get("outputs", []))


def test_extract_and_sft_notebooks(tmp_path, tiny_model_dir):
    """Hand-made debate records (the random tiny model never answers right) -> extract -> DA student."""
    from agentark_utils.store import append_jsonl
    from test_extraction import R, record

    debate_dir = tmp_path / "debate"
    append_jsonl(debate_dir / "records.jsonl", [
        record([R("wrong", "correct", "correct"), R("correct", "correct", "correct")], "a", single="correct"),
        record([R("correct", "correct", "wrong")], "b"),
        record([R("correct", "wrong", "wrong")], "c"),
        record([R("correct", "correct", "correct")], "t1", split="test"),
        record([R("wrong", "wrong", "wrong")], "t2", split="test"),
    ])
    params = tiny_params(tmp_path, tiny_model_dir)
    extract_dir = tmp_path / "extract"
    run_stage("extract", params, out_dir=str(extract_dir), paths={"debate_dir": str(debate_dir)})
    stats = json.loads((extract_dir / "metrics.json").read_text())
    assert stats["n_kept"] == 2 and stats["corrective_traces"] == 1
    assert stats["rows"] == {"rsft": 2, "da": 5, "answer_only": 2, "cot": 1}

    out, model_dir = tmp_path / "sft", tmp_path / "models" / "da"
    run_stage("sft", params, out_dir=str(out), strategy="da",
              paths={"extract_dir": str(extract_dir), "model_dir": str(model_dir)})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == "da" and metrics["training"]["n_rows"] == 5 and metrics["training"]["n_questions"] == 2
    assert (model_dir / "model.safetensors").exists()
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"

    # scaling: DA on half of its 2 questions, and a 3-agent debate of the 3 training questions; the
    # main points come from the evaluate stage's table
    eval_dir, scaling_out, work = tmp_path / "eval", tmp_path / "scaling", tmp_path / "models" / "scaling"
    eval_dir.mkdir()
    (eval_dir / "accuracy.csv").write_text("model,test_set,accuracy,ci_low,ci_high\n"
                                           "base,arith_mix (in-domain),0.5,0.0,1.0\nda,arith_mix (in-domain),1.0,1.0,1.0\n")
    (eval_dir / "predictions.jsonl").write_text("".join(  # the main DA student's answers, paired with each point
        json.dumps({"model": "da", "test_set": "arith_mix (in-domain)", "id": i, "status": "correct"}) + "\n"
        for i in ("t1", "t2")))
    scaling_params = yaml.safe_load(open(params))
    scaling_params["scaling"] = {"strategies": ["da"], "fractions": [0.5], "agents": [3], "seed": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(scaling_params))
    paths = {"debate_dir": str(debate_dir), "extract_dir": str(extract_dir), "eval_dir": str(eval_dir),
             "work_dir": str(work), "figures_dir": str(tmp_path / "figures")}
    run_stage("scaling", params, out_dir=str(scaling_out), paths=paths)
    points = json.loads((scaling_out / "metrics.json").read_text())
    # the tiny model's 3-agent debates keep no question (no 2 correct agents): no new agents point
    assert list(points) == ["agents | da | 2", "data | da | 1", "data | da | 2"]
    assert points["data | da | 2"]["accuracy"] == 1.0 and 0 <= points["data | da | 1"]["accuracy"] <= 1
    # the sweep's point against the main DA student, which was right on both: it can only lose
    paired = points["data | da | 1"]["vs_main"]
    assert paired["gained"] == 0 and paired["lost"] == round(2 * (1 - points["data | da | 1"]["accuracy"]))
    assert "vs_main" not in points["data | da | 2"]  # the main run's own point
    debated = (scaling_out / "debates" / "3-agents.jsonl").read_text().splitlines()
    assert [len(json.loads(r)["debate"]["rounds"][0]) for r in debated] == [3, 3, 3]  # 3 training questions
    assert not (work / "data-1-da").exists()  # each point's model is deleted once it is evaluated
    assert (tmp_path / "figures" / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    # a re-run finds the point done and trains nothing: a planted value survives it
    from agentark_utils.store import read_jsonl, rewrite_jsonl

    rewrite_jsonl(scaling_out / "points.jsonl", [{**p, "accuracy": 0.0} for p in read_jsonl(scaling_out / "points.jsonl")])
    run_stage("scaling", params, out_dir=str(scaling_out), paths=paths)
    assert json.loads((scaling_out / "metrics.json").read_text())["data | da | 1"]["accuracy"] == 0.0


def test_sft_stage_needs_a_known_strategy(tmp_path, tiny_model_dir):
    import pytest

    with pytest.raises(SystemExit, match="needs --strategy"):
        run_stage("sft", tiny_params(tmp_path, tiny_model_dir), strategy="rsfft")


def test_pad_notebook(tmp_path, tiny_model_dir):
    """Hand-made debates with step-structured traces -> PRM -> one GRPO step."""
    from agentark_utils.store import append_jsonl
    from test_extraction import record

    good, bad = "2 + 3 = 5\n\nFinal Answer: 5", "2 + 3 = 6\n\nFinal Answer: 6"
    debate_dir = tmp_path / "debate"
    append_jsonl(debate_dir / "records.jsonl", [
        record([[("correct", good), ("wrong", bad)], [("correct", good), ("correct", good)]], "a"),
        record([[("wrong", bad), ("correct", good)]], "b"),
        record([[("correct", good), ("wrong", bad)]], "t1", split="test"),
        record([[("wrong", bad), ("wrong", bad)]], "t2", split="test"),
    ])
    extract_dir = tmp_path / "extract"  # extraction kept "a" only: GRPO's one prompt
    append_jsonl(extract_dir / "rsft.jsonl", [{"question_id": "a", "prompt": "p", "completion": good, "weight": 1.0,
                                               "source": "agent 0"}])
    out, prm_dir, model_dir = tmp_path / "pad", tmp_path / "models" / "prm", tmp_path / "models" / "pad"
    run_stage("pad", tiny_params(tmp_path, tiny_model_dir), out_dir=str(out),
              paths={"debate_dir": str(debate_dir), "extract_dir": str(extract_dir), "prm_dir": str(prm_dir),
                     "model_dir": str(model_dir)})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prm"]["n_questions"] == 2 and metrics["prm"]["held-out"]["n_steps"] == 4
    assert 0 <= metrics["prm"]["held-out"]["auroc"] <= 1
    assert metrics["grpo"]["n_prompts"] == 1  # the kept question, not "b"
    assert metrics["grpo"]["steps"] == 1 and metrics["grpo"]["prompts_seen"] == 2  # a step's two, repeats included
    assert 0 <= metrics["grpo"]["frac_groups_nonzero_std"] <= 1
    assert set(metrics["prm"]["held_out_vs_baselines"]) == {"PRM", "untrained head", "fewer steps", "shorter trace",
                                                            "earlier step"}
    assert set(metrics["prm"]["aggregations"]) == {"mean", "min", "softmin", "last"}
    assert {"stage1_loss_same_batches", "stage2_loss_same_batches"} <= set(metrics["prm"])
    assert (prm_dir / "model.safetensors").exists() and (model_dir / "model.safetensors").exists()
    for name in ("prm_loss.png", "prm_scores.png", "prm_quality.png", "grpo.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert len((out / "grpo_log.csv").read_text().splitlines()) == 2  # header + one step


def test_pad_validation_notebook(tmp_path, tiny_model_dir):
    """The base and a PAD student (here the tiny model itself) on held-out questions, paired."""
    out = tmp_path / "pad_validation"
    run_stage("pad_validation", tiny_params(tmp_path, tiny_model_dir), out_dir=str(out),
              paths={"pad_dir": str(tiny_model_dir)})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["base"]["accuracy"] == metrics["pad"]["accuracy"]
    assert metrics["pad_vs_base"]["answers_changed"] == 0  # the same weights answer alike
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    train, test = load_task("arith_mix", 2, 2)
    assert len(predictions) == 6 and not {p["id"] for p in predictions} & {q.id for q in train + test}


def test_evaluate_notebook(tmp_path, tiny_model_dir):
    """Base + two 'students' (the tiny model twice) on the in-domain test split and one OOD family."""
    import yaml as _yaml

    from agentark_utils.store import append_jsonl
    from test_extraction import R, record

    debate_dir = tmp_path / "debate"
    records = [record([R("correct", "wrong")], "a"), record([R("correct", "correct")], "t1", split="test"),
               record([R("wrong", "wrong")], "t2", split="test")]
    records += [record([R("wrong", "correct")], f"o{i}", split="ood:equations") for i in range(3)]
    for r in records:  # the votes the debate stage stores with each record
        r["debate"]["final"] = r["debate"]["majority"] = {k: r["debate"]["summarizer"][k] for k in ("answer", "status")}
        r["self_consistency"].update({k: r["self_consistency"]["samples"][0][k] for k in ("answer", "status")})
    append_jsonl(debate_dir / "records.jsonl", records)
    params_path = tiny_params(tmp_path, tiny_model_dir)
    params = _yaml.safe_load(open(params_path))
    params["data"].update(ood_tasks=["equations"], n_ood=3)
    (tmp_path / "params.yaml").write_text(_yaml.safe_dump(params))
    out, figures = tmp_path / "eval", tmp_path / "figures"
    run_stage("evaluate", params_path, out_dir=str(out),
              paths={"debate_dir": str(debate_dir), "figures_dir": str(figures),
                     "students": {"rsft": str(tiny_model_dir), "pad": str(tiny_model_dir)}})
    metrics = json.loads((out / "metrics.json").read_text())["accuracy"]
    # the debate stage's systems (the hand-made records have no sampled single agent) and the students
    assert set(metrics) == {"single agent", "self-consistency", "debate (final answer)", "debate (majority)",
                            "base", "rsft", "pad"}
    assert {k: v["n"] for k, v in metrics["pad"].items()} == {"arith_mix (in-domain)": 2, "equations (out-of-domain)": 3}
    pad, debate = metrics["pad"]["arith_mix (in-domain)"], metrics["debate (final answer)"]["arith_mix (in-domain)"]
    assert pad["calls_per_question"] == 1 and pad["kind"] == "student"
    assert pad["debate / this (generated_tokens)"] == pytest.approx(
        debate["generated_tokens_per_question"] / pad["generated_tokens_per_question"])
    assert pad["vs_base_gained"] == pad["vs_base_lost"] == 0  # the same weights as the base
    assert debate["vs_base_ci95"][0] <= debate["vs_base_difference"] <= debate["vs_base_ci95"][1]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3 * (2 + 3)
    for name in ("accuracy_grid.png", "cost_accuracy.png"):
        assert (figures / name).read_bytes()[:4] == b"\x89PNG"

    # robustness: the in-domain test questions perturbed, against the clean answers above
    rob = tmp_path / "robustness"
    run_stage("robustness", params_path, out_dir=str(rob),
              paths={"debate_dir": str(debate_dir), "eval_dir": str(out), "figures_dir": str(figures),
                     "students": {"pad": str(tiny_model_dir)}})
    changes = json.loads((rob / "metrics.json").read_text())
    # the hand-made questions carry no arithmetic expression, so `renumber` does not apply to them
    assert set(changes) == {f"{m} | {p}" for m in ("base", "pad") for p in ("distractor", "peer_hint")}
    assert all(v["n"] == 2 and -1 <= v["change"] <= 1 and v["gained"] + v["lost"] <= 2 and "mde" in v
               for v in changes.values())
    assert (figures / "robustness.png").read_bytes()[:4] == b"\x89PNG"

    # reasoning-span perplexity; the hand-made questions have no gold reasoning, so give one
    gold = [dict(r, question={**r["question"], "reasoning": "2 + 3 = 5"}) for r in records]
    (debate_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gold))
    run_stage("reasoning", params_path, out_dir=str(tmp_path / "reasoning"),
              paths={"debate_dir": str(debate_dir), "figures_dir": str(figures), "students": {"da": str(tiny_model_dir)}})
    ppl = json.loads((tmp_path / "reasoning" / "metrics.json").read_text())
    assert set(ppl) == {"base", "da"} and ppl["da"]["n_questions"] == 2
    assert ppl["da"]["avg_nll"] == pytest.approx(ppl["base"]["avg_nll"])  # the same weights twice
    assert ppl["da"]["vs_base"]["difference"] == pytest.approx(0) and ppl["da"]["vs_base"]["n_questions"] == 2
    assert (figures / "reasoning_perplexity.png").read_bytes()[:4] == b"\x89PNG"

    # and the paper side by side, from those results
    run_stage("figures", params_path, out_dir=str(figures), paths={"eval_dir": str(out), "figures_dir": str(figures)})
    comparison = json.loads((figures / "paper_comparison.json").read_text())
    assert comparison["paper_headline_relative_gain_pct"] == 4.8
    assert set(comparison["ours_gain_points"]) >= {"pad | arith_mix (in-domain)", "debate (final answer) | arith_mix (in-domain)"}
    for name in ("strategies_vs_paper.png", "tables9_13_vs_ours.png"):
        assert (figures / name).read_bytes()[:4] == b"\x89PNG"


def _without_timings(value):
    """Metrics with wall-clock measurements removed: those differ run to run, nothing else may."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "latency" not in k and "wall" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_same_seed_same_results_twice(tmp_path, tiny_model_dir):
    """The debate stage run twice from scratch on CPU: identical records and metrics (timings aside)."""
    params = tiny_params(tmp_path, tiny_model_dir)
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        run_stage("debate", params, out_dir=str(out))
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        runs.append((_without_timings(records), _without_timings(json.loads((out / "metrics.json").read_text()))))
    assert runs[0] == runs[1]
    assert runs[0][1]["n_questions"] == 6  # 2 train, 2 test, 2 out-of-domain


def test_open_ended_notebook(tmp_path, tiny_model_dir):
    """The hub-only sets from fixture files in their own format; and the default, with none configured."""
    from conftest import FIXTURES

    out, figures = tmp_path / "open", tmp_path / "figures"
    run_stage("open_ended", tiny_params(tmp_path, tiny_model_dir), out_dir=str(out),
              paths={"figures_dir": str(figures), "students": {}})
    assert json.loads((out / "metrics.json").read_text()) == {}
    assert (figures / "open_ended.png").read_bytes()[:4] == b"\x89PNG"

    params = yaml.safe_load(open(tiny_params(tmp_path, tiny_model_dir)))
    params["open_ended"].update(tasks=["truthfulqa", "hotpotqa", "qmsum"], n=2, max_new_tokens=6,
                                paths={t: str(FIXTURES / f"{t}.jsonl") for t in ("truthfulqa", "hotpotqa", "qmsum")})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage("open_ended", str(tmp_path / "params.yaml"), out_dir=str(out),
              paths={"figures_dir": str(figures), "students": {"da": str(tiny_model_dir)}})
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {"truthfulqa": ("bleu", "rouge1", "rouge2", "rougeL"), "hotpotqa": ("f1", "rouge1", "rouge2", "rougeL"),
                "qmsum": ("f1", "rouge1", "rouge2", "rougeL")}
    assert set(metrics) == {f"{m} | {t} | {x}" for m in ("base", "da") for t, xs in expected.items() for x in xs}
    assert all(v["n"] == 2 and 0 <= v["mean"] <= 1 for v in metrics.values())
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2 * 6  # 2 models x 3 sets x 2 items
