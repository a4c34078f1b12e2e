from pathlib import Path

import pytest

from agentark_utils.extraction import Example
from agentark_utils.config import SFTParams
from agentark_utils.scaling import data_subset, point_fingerprint, question_order


def rows(n_questions: int, per_question: int = 3) -> list[Example]:
    return [Example(f"q{i}", f"prompt {i}", f"trace {j}", 1 / per_question, f"agent {j}")
            for i in range(n_questions) for j in range(per_question)]


@pytest.mark.parametrize("fraction, n_questions", [(1.0, 10), (0.5, 5), (0.25, 3), (0.01, 1)])
def test_a_fraction_keeps_that_share_of_questions_with_all_their_rows(fraction, n_questions):
    subset = data_subset(rows(10), fraction, seed=0)
    kept = {e.question_id for e in subset}
    assert len(kept) == n_questions
    assert len(subset) == 3 * n_questions  # DA's k traces stay together, weights unchanged
    assert all(e.weight == pytest.approx(1 / 3) for e in subset)


def test_smaller_fractions_are_nested_in_larger_ones():
    examples = rows(20)
    previous: set[str] = set()
    for fraction in (0.1, 0.25, 0.5, 0.75, 1.0):
        kept = {e.question_id for e in data_subset(examples, fraction, seed=3)}
        assert previous <= kept
        previous = kept


def test_the_subset_depends_on_the_seed_only():
    examples = rows(20)
    assert data_subset(examples, 0.3, seed=1) == data_subset(list(reversed(examples))[::-1], 0.3, seed=1)
    assert question_order(examples, 1) != question_order(examples, 2)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        data_subset(rows(4), fraction, seed=0)


def test_a_point_is_not_reused_after_a_training_setting_changes(tmp_path):
    sft = SFTParams(learning_rate=5e-5, epochs=3, batch_size=8)
    inputs = [e.to_dict() for e in rows(4)]
    model = tmp_path / "base"
    model.mkdir()
    (model / "weights").write_bytes(b"v1")
    before = point_fingerprint("data", "da", 4, inputs, str(model), [sft])
    assert point_fingerprint("data", "da", 4, inputs, str(model), [sft]) == before
    assert point_fingerprint("data", "da", 4, inputs, str(model), [sft.model_copy(update={"learning_rate": 1e-4})]) != before
    assert point_fingerprint("data", "da", 4, inputs[:-1], str(model), [sft]) != before  # other rows
    (model / "weights").write_bytes(b"v2")
    assert point_fingerprint("data", "da", 4, inputs, str(model), [sft]) != before  # other base weights


def sweep_config(**scaling):
    import yaml
    from pathlib import Path

    from agentark_utils import config

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    sections = {k: params[k] for k in ("model", "data", "debate", "extraction", "sft", "evaluation")}
    return config.validate_sections({**sections, "scaling": {"strategies": ["da"], "fractions": [0.5], "agents": [],
                                                             "seed": 0, **scaling}})


@pytest.fixture
def stand_ins(monkeypatch):
    """Training writes an empty model directory and evaluation answers 0.5; both record their calls."""
    from agentark_utils import scaling

    trained = []

    def train(function, launcher, examples, out_dir, **kwargs):
        trained.append(sorted({e.question_id for e in examples}))
        out_dir.mkdir(parents=True)

    def evaluate(models, test_sets, *args):
        return [], [{"accuracy": 0.5, "ci95": [0.3, 0.7]} for _ in models]

    monkeypatch.setattr(scaling.launch, "train", train)
    monkeypatch.setattr(scaling, "evaluate_grid", evaluate)
    return trained


def test_the_sweep_trains_each_point_once_and_resumes(tmp_path, stand_ins):
    from agentark_utils.scaling import run_sweep
    from agentark_utils.tasks import Question

    test = [Question(id="t1", task="arith_mix", question="1+1", answer="2", answer_format="number")]
    # 2 questions: shares 0.3 and 0.5 both round to 1 question, the same point (trained once)
    cfg = sweep_config(fractions=[0.3, 0.5])
    points = run_sweep(cfg, [], test, {"da": rows(2)}, "arith_mix", tmp_path / "out", tmp_path / "work")
    assert [(p["axis"], p["strategy"], p["x"], p["n_questions"], p["n_rows"]) for p in points] == [("data", "da", 1, 1, 3)]
    assert len(stand_ins) == 1
    assert not (tmp_path / "work" / "data-1-da").exists()  # the point's model is deleted once evaluated

    assert run_sweep(cfg, [], test, {"da": rows(2)}, "arith_mix", tmp_path / "out", tmp_path / "work") == points
    assert len(stand_ins) == 1  # resumed: nothing retrained
    from agentark_utils.store import append_jsonl

    append_jsonl(tmp_path / "out" / "points.jsonl", points)  # an older run recorded the point twice
    assert run_sweep(cfg, [], test, {"da": rows(2)}, "arith_mix", tmp_path / "out", tmp_path / "work") == points
    # 0.9 of 2 questions rounds up to both: the main run's own point (from evaluate), not trained again
    more = sweep_config(fractions=[0.5, 0.9])
    assert [p["x"] for p in run_sweep(more, [], test, {"da": rows(2)}, "arith_mix", tmp_path / "out", tmp_path / "work")] == [1]
    assert len(stand_ins) == 1


def test_the_curves_end_at_the_main_run(tmp_path, stand_ins):
    import pandas as pd

    from agentark_utils.scaling import curve_points, run_sweep
    from agentark_utils.tasks import Question

    test = [Question(id="t1", task="arith_mix", question="1+1", answer="2", answer_format="number")]
    cfg = sweep_config(fractions=[0.5], agents=[2])
    examples = {"da": rows(4)}
    points = run_sweep(cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"agents": []})}), [], test,
                       examples, "arith_mix", tmp_path / "out", tmp_path / "work")
    main_run = pd.DataFrame([{"model": m, "test_set": t, "accuracy": a, "ci_low": 0.0, "ci_high": 1.0}
                             for m, a in (("base", 0.25), ("da", 0.75)) for t in ("arith_mix", "equations")])
    curves = curve_points(points, main_run, examples, cfg, "arith_mix")
    assert list(curves.columns) == ["axis", "strategy", "x", "n_questions", "n_rows", "accuracy", "ci_low", "ci_high"]
    assert [(r.axis, r.x, r.accuracy) for r in curves.itertuples()] == [
        ("agents", cfg.debate.n_agents, 0.75),  # the main run's 3 agents and all 4 questions
        ("data", 2, 0.5),                       # the sweep's half
        ("data", 4, 0.75)]                      # the main run


def test_the_agents_axis_debates_again_and_trains_what_extraction_kept(tmp_path, stand_ins, monkeypatch):
    from agentark_utils import scaling
    from agentark_utils.tasks import Question

    debates, teacher = [], []

    class Teacher:
        def __enter__(self):
            teacher.append("made")
            return self

        def __exit__(self, *exc):
            teacher.append(f"closed before training {len(stand_ins)} students")

    def run_debate(splits, backend, cfg, path, run_id):
        debates.append((sorted(splits), cfg.n_agents, cfg.self_consistency_samples, Path(path).name))
        return ["records"]

    monkeypatch.setattr(scaling, "make_backend", lambda model, role: Teacher())
    monkeypatch.setattr(scaling.debate, "run_debate", run_debate)
    monkeypatch.setattr(scaling, "build_examples", lambda records, *args: {"da": rows(2), "rsft": []})
    train = [Question(id="q0", task="arith_mix", question="2+2", answer="4", answer_format="number")]
    test = [Question(id="t1", task="arith_mix", question="1+1", answer="2", answer_format="number")]
    cfg = sweep_config(strategies=["da", "rsft"], fractions=[0.5], agents=[2])
    points = scaling.run_sweep(cfg, train, test, {"da": rows(4), "rsft": rows(4)}, "arith_mix", tmp_path / "out",
                               tmp_path / "work")
    assert debates == [(["train"], 2, 1, "2-agents.jsonl")]  # the training questions, 2 agents, 1 sample
    agents = [(p["strategy"], p["x"], p["n_questions"]) for p in points if p["axis"] == "agents"]
    assert agents == [("da", 2, 2)]  # rsft kept nothing on the new debate: no point
    assert len(stand_ins) == 3  # da and rsft on half the questions, da on the 2-agent debate
    # the teacher frees its GPU memory (a vLLM engine) before the agents axis's students train
    assert teacher == ["made", "closed before training 2 students"]


def test_a_point_recorded_without_its_right_answers_is_trained_again(tmp_path, stand_ins):
    from agentark_utils.scaling import run_sweep
    from agentark_utils.store import read_jsonl, rewrite_jsonl
    from agentark_utils.tasks import Question

    test = [Question(id="t1", task="arith_mix", question="1+1", answer="2", answer_format="number")]
    cfg = sweep_config(fractions=[0.5])
    run_sweep(cfg, [], test, {"da": rows(2)}, "arith_mix", tmp_path / "out", tmp_path / "work")
    points_file = tmp_path / "out" / "points.jsonl"
    rewrite_jsonl(points_file, [{k: v for k, v in p.items() if k not in ("correct_ids", "n_answered")}
                                for p in read_jsonl(points_file)])
    run_sweep(cfg, [], test, {"da": rows(2)}, "arith_mix", tmp_path / "out", tmp_path / "work")
    assert len(stand_ins) == 2 and all("correct_ids" in p and "n_answered" in p for p in read_jsonl(points_file))


def _main_rows(model, right, n=40, test_set="arith_mix"):
    return [{"model": model, "test_set": test_set, "id": f"t{i:02d}", "status": "correct" if i in right else "wrong"}
            for i in range(n)]


@pytest.mark.parametrize("point_right, gained, lost", [
    (range(10), 0, 0),          # the same answers as the main student
    (range(4, 10), 0, 4),       # less data: 4 of the main student's right answers lost
    ([*range(10), 30, 31], 2, 0),
])
def test_versus_main_pairs_each_point_with_its_strategys_main_student(point_right, gained, lost):
    from agentark_utils.scaling import versus_main

    main = _main_rows("da", set(range(10))) + _main_rows("rsft", set()) + _main_rows("da", set(), test_set="equations")
    point = {"axis": "data", "strategy": "da", "x": 5, "n_answered": 40, "correct_ids": [f"t{i:02d}" for i in point_right]}
    out = versus_main([point], main, "arith_mix")["data | da | 5"]
    assert (out["gained"], out["lost"]) == (gained, lost)
    assert out["difference"] == pytest.approx((gained - lost) / 40)
    assert out["ci95"][0] <= out["difference"] <= out["ci95"][1] and "mde" in out and "mcnemar_p" in out


def test_versus_main_refuses_what_it_cannot_pair():
    from agentark_utils.scaling import versus_main

    point = {"axis": "agents", "strategy": "rsft", "x": 2, "n_answered": 40, "correct_ids": ["t01"]}
    with pytest.raises(ValueError, match="no 'rsft' answers"):
        versus_main([point], _main_rows("da", {1}), "arith_mix")
    with pytest.raises(ValueError, match="other questions than the main run"):  # right on one it never asked
        versus_main([{**point, "correct_ids": ["elsewhere"]}], _main_rows("rsft", {1}), "arith_mix")
    with pytest.raises(ValueError, match="20 against 40"):  # its wrong answers would be unknown ones
        versus_main([{**point, "n_answered": 20}], _main_rows("rsft", {1}), "arith_mix")


def test_the_main_runs_agent_count_is_not_debated_again(tmp_path, stand_ins, monkeypatch):
    from agentark_utils import scaling
    from agentark_utils.tasks import Question

    monkeypatch.setattr(scaling.debate, "run_debate", lambda *args: pytest.fail("debated the main run's agent count"))
    test = [Question(id="t1", task="arith_mix", question="1+1", answer="2", answer_format="number")]
    cfg = sweep_config(fractions=[0.5])
    cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"agents": [cfg.debate.n_agents]})})
    points = scaling.run_sweep(cfg, [], test, {"da": rows(4)}, "arith_mix", tmp_path / "out", tmp_path / "work")
    assert [(p["axis"], p["x"]) for p in points] == [("data", 2)]
