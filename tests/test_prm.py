"""The PRM: encoding of steps, the Eq. 7 loss by hand, the Stage I freeze, training and scoring."""

import math

import pytest
import torch
from safetensors.torch import load_file

from agentark_utils.config import PRMParams
from agentark_utils.prm import (
    BASELINES,
    StepBatchCollator,
    StepScorer,
    baseline_scores,
    contrastive_step_loss,
    encode_steps,
    evaluate_prm,
    load_prm,
    prm_loss,
    question_items,
    set_stage,
    stage_losses,
    step_scores,
    step_table,
    train_prm,
    untrained_scorer,
)
from agentark_utils.prompts import render_chat, user_turn
from agentark_utils.steps import STEP_SEPARATOR, StepTrace


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_contrastive_loss_by_hand():
    # steps: question 0 has traces 0 and 1, question 1 has trace 2
    scores = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0, 1.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    traces = torch.tensor([0, 1, 1, 0, 2, 2])
    tau = 0.5
    # positive 0 (trace 0) vs negatives 1, 2 (trace 1); positive 3 (trace 0) vs the same negatives;
    # positive 5 has only a negative of its own trace, so it is no anchor; step 4 is in another question
    def term(p):
        return -math.log(math.exp(sig(p) / tau) / (math.exp(sig(p) / tau) + math.exp(sig(-1.0) / tau)
                                                   + math.exp(sig(0.5) / tau)))
    expected = (term(2.0) + term(0.0)) / 2
    assert contrastive_step_loss(scores, labels, groups, traces, tau).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_without_pairs_is_zero_with_a_gradient():
    scores = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = contrastive_step_loss(scores, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([0, 0]), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None


def test_ce_term_adds_binary_cross_entropy():
    scores, labels = torch.tensor([0.3, -0.2]), torch.tensor([1.0, 0.0])
    groups, traces = torch.tensor([0, 1]), torch.tensor([0, 1])  # no pairs: only the CE term is left
    bce = -(math.log(sig(0.3)) + math.log(1 - sig(-0.2))) / 2
    assert prm_loss(scores, labels, groups, traces, 0.1, ce_weight=2.0).item() == pytest.approx(2 * bce, rel=1e-6)


def test_encode_steps_marks_each_separator(tiny_model_dir):
    _, tok = load_prm(str(tiny_model_dir))
    prompt = render_chat(tok, [user_turn("What is 2 + 3?")])
    ids, positions = encode_steps(tok, prompt, ["2 + 3 = 5", "Final Answer: 5"], max_length=512)
    assert len(positions) == 2 and positions[-1] == len(ids) - 1
    assert tok.decode(ids[: positions[0] + 1]) == prompt + "2 + 3 = 5" + STEP_SEPARATOR
    assert tok.decode(ids).endswith("Final Answer: 5" + STEP_SEPARATOR)
    short_ids, short_positions = encode_steps(tok, prompt, ["2 + 3 = 5", "Final Answer: 5"], max_length=positions[0] + 1)
    assert short_positions == positions[:1] and len(short_ids) == positions[0] + 1  # what does not fit is dropped


def test_collator_flattens_questions_into_scored_steps():
    items = [{"traces": [{"input_ids": [5, 6, 7], "positions": [1, 2], "labels": [1, 0]},
                         {"input_ids": [5, 8], "positions": [1], "labels": [1]}]},
             {"traces": [{"input_ids": [9], "positions": [0], "labels": [0]}]}]
    batch = StepBatchCollator(pad_token_id=0, bucket_cost_tokens=0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert batch["step_rows"].tolist() == [0, 0, 1, 2]
    assert batch["step_positions"].tolist() == [1, 2, 1, 0]
    assert batch["step_labels"].tolist() == [1, 0, 1, 0]
    assert batch["step_groups"].tolist() == [0, 0, 0, 1]
    assert batch["row_buckets"].tolist() == [0, 1, 2]  # a forward costs nothing extra: one bucket per length


def test_bucketed_forward_gives_the_scores_and_gradients_of_one_forward(tiny_model_dir):
    """The padding saved changes nothing: the same step scores, loss and gradients as one padded forward."""
    traces, prompts = traces_and_prompts()
    traces.append(StepTrace("q0", "long", [" ".join(["seven"] * 80), "Final Answer: 7"], [0, 0]))
    model, tok = load_prm(str(tiny_model_dir))
    items = question_items(traces, prompts, tok, max_length=512)
    results = []
    for cost in (0, 10**9):
        batch = StepBatchCollator(tok.pad_token_id, bucket_cost_tokens=cost)(items)
        model.zero_grad()
        scores = step_scores(model, batch)
        loss = prm_loss(scores, batch["step_labels"], batch["step_groups"], batch["step_rows"], 0.1, 1.0)
        loss.backward()
        results.append((len(set(batch["row_buckets"].tolist())), scores.detach(), loss.item(),
                        torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    (many, scores, loss, grad), (one, scores1, loss1, grad1) = results
    assert many > 1 and one == 1
    assert torch.allclose(scores, scores1, atol=1e-5) and loss == pytest.approx(loss1, rel=1e-5)
    assert ((grad - grad1).norm() / grad1.norm()).item() < 1e-4


def test_stage_one_trains_exactly_the_head_last_block_and_norm(tiny_model_dir):
    model, _ = load_prm(str(tiny_model_dir))
    names = set(set_stage(model, 1))
    last = len(model.base_model.layers) - 1
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("score.", f"model.layers.{last}.", "model.norm."))}
    assert names == expected and "model.embed_tokens.weight" not in names
    assert set(set_stage(model, 2)) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        set_stage(model, 3)


def traces_and_prompts():
    traces, prompts = [], {}
    for q in range(4):
        prompts[f"q{q}"] = f"What is {q} + 2?"
        traces += [StepTrace(f"q{q}", "r1a1", [f"{q} + 2 = {q + 2}", f"Final Answer: {q + 2}"], [1, 1]),
                   StepTrace(f"q{q}", "r1a2", [f"{q} + 2 = {q + 7}", f"Final Answer: {q + 7}"], [0, 0]),
                   StepTrace(f"q{q}", "r2a2", [f"{q} + 2 = {q + 2}", f"so {q + 3}", f"Final Answer: {q + 3}"], [1, 0, 0])]
    return traces, prompts


@pytest.mark.parametrize("stage2_steps", [0, 2])
def test_train_prm_freezes_then_unfreezes(tiny_model_dir, tmp_path, stage2_steps):
    traces, prompts = traces_and_prompts()
    params = PRMParams(stage1_steps=3, stage2_steps=stage2_steps, stage1_learning_rate=1e-2,
                       stage2_learning_rate=1e-2, batch_questions=2, save_steps=2)
    result = train_prm(traces, prompts, str(tiny_model_dir), tmp_path / "prm", params, device="cpu")
    assert (result.n_questions, result.n_traces, result.n_steps, result.n_positive_steps) == (4, 12, 28, 12)
    assert 0 < result.trainable_stage1 < result.trainable_stage2
    assert [h["stage"] for h in result.log_history if "loss" in h] == [1] * 3 + [2] * stage2_steps
    base = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(tmp_path / "prm" / "model.safetensors")
    assert "score.weight" in trained  # the head is saved with the model
    assert not torch.equal(base["model.layers.1.mlp.up_proj.weight"], trained["model.layers.1.mlp.up_proj.weight"])
    first_layer_moved = not torch.equal(base["model.layers.0.mlp.up_proj.weight"], trained["model.layers.0.mlp.up_proj.weight"])
    assert first_layer_moved == (stage2_steps > 0)
    assert not (tmp_path / "prm.checkpoints").exists()


def test_no_traces_is_a_clear_error(tiny_model_dir, tmp_path):
    params = PRMParams(stage1_steps=1, stage2_steps=0, stage1_learning_rate=1e-3, stage2_learning_rate=1e-3)
    with pytest.raises(ValueError, match="no labelled step traces"):
        train_prm([], {}, str(tiny_model_dir), tmp_path / "prm", params, device="cpu")


def test_scorer_is_batch_invariant_and_feeds_the_evaluation(tiny_model_dir, tmp_path):
    traces, prompts = traces_and_prompts()
    model, tok = load_prm(str(tiny_model_dir))
    model.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    params = PRMParams(stage1_steps=1, stage2_steps=0, stage1_learning_rate=1e-3, stage2_learning_rate=1e-3)
    alone = StepScorer(str(tmp_path / "prm"), params.model_copy(update={"score_batch_size": 1}), device="cpu")
    together = StepScorer(str(tmp_path / "prm"), params.model_copy(update={"score_batch_size": 8}), device="cpu")
    assert (alone.batch_size, together.batch_size) == (1, 8)
    assert alone.collate.bucket_cost_tokens == params.bucket_cost_tokens
    assert StepScorer(str(tmp_path / "prm"), params.model_copy(update={"bucket_cost_tokens": 7}),
                      device="cpu").collate.bucket_cost_tokens == 7
    args = ([prompts[t.question_id] for t in traces], [t.steps for t in traces])
    a, b = alone.score(*args), together.score(*args)
    assert [len(s) for s in a] == [len(t.steps) for t in traces]
    assert all(0 < p < 1 for s in a for p in s)
    assert [x for s in a for x in s] == pytest.approx([x for s in b for x in s], abs=2e-2)  # bf16 compute
    assert alone.score(["Q?"], [[]]) == [[]]
    rows, summary = evaluate_prm(together, traces, prompts)
    assert summary["n_steps"] == len(rows) == 28 and summary["positive_rate"] == pytest.approx(12 / 28)
    assert 0 <= summary["step_accuracy"] <= 1 and 0 <= summary["auroc"] <= 1


def test_scorer_length_is_the_configured_one(tiny_model_dir, tmp_path):
    """No default of its own (it was 1024): a long completion's final-answer step is scored at prm.max_length,
    which the scorer takes from the prm section it is given whole."""
    model, tok = load_prm(str(tiny_model_dir))
    model.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    steps = [" ".join(["seven"] * 300) + f" so step {i}" for i in range(4)] + ["Final Answer: 7"]  # > 1024 tokens
    params = PRMParams(stage1_steps=1, stage2_steps=0, stage1_learning_rate=1e-3, stage2_learning_rate=1e-3,
                       max_length=2048)
    (scores,) = StepScorer(str(tmp_path / "prm"), params, device="cpu").score(["Q?"], [steps])
    assert len(scores) == 5
    short = params.model_copy(update={"max_length": 1024})
    (cut,) = StepScorer(str(tmp_path / "prm"), short, device="cpu").score(["Q?"], [steps])
    assert len(cut) < 5


def test_question_items_group_by_question(tiny_model_dir):
    traces, prompts = traces_and_prompts()
    _, tok = load_prm(str(tiny_model_dir))
    items = question_items(traces, prompts, tok, max_length=512)
    assert len(items) == 4 and all(len(i["traces"]) == 3 for i in items)


def test_same_seed_same_prm(tiny_model_dir, tmp_path):
    """The fresh head is drawn at load time: without seeding it first, two runs differ."""
    traces, prompts = traces_and_prompts()
    params = PRMParams(stage1_steps=1, stage2_steps=0, stage1_learning_rate=1e-2, stage2_learning_rate=1e-2)
    for name in ("a", "b"):
        train_prm(traces, prompts, str(tiny_model_dir), tmp_path / name, params, device="cpu")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert torch.equal(a["score.weight"], b["score.weight"])


def test_baselines_score_the_shape_of_a_trace_not_its_content():
    traces = [StepTrace("q", "r1a1", ["ab", "cd"], [1, 1]), StepTrace("q", "r1a2", ["abcdef"], [0])]
    assert baseline_scores(traces) == {
        "fewer steps": [[-2.0, -2.0], [-1.0]],
        "shorter trace": [[-6.0, -6.0], [-6.0]],  # "ab\n\ncd" and "abcdef": 6 characters each
        "earlier step": [[0.0, -1.0], [0.0]],
    }
    assert set(baseline_scores(traces)) == set(BASELINES)


def test_step_table_keeps_only_the_steps_every_score_scored():
    traces = [StepTrace("q1", "r1a1", ["a", "b", "c"], [1, 0, 0]), StepTrace("q2", "r1a1", ["d"], [1])]
    prm = [[0.9, 0.2], [0.7]]  # the PRM cut the first trace's last step (max_length)
    table = step_table(traces, {"PRM": prm, **baseline_scores(traces)})
    assert table[["question_id", "step", "label", "PRM", "fewer steps"]].values.tolist() == [
        ["q1", 0, 1, 0.9, -3.0], ["q1", 1, 0, 0.2, -3.0], ["q2", 0, 1, 0.7, -1.0]]
    assert table["trace_correct"].tolist() == [False, False, True] and table["trace_steps"].tolist() == [3, 3, 1]


def test_untrained_scorer_is_the_head_train_prm_starts_from(tiny_model_dir, tmp_path):
    traces, prompts = traces_and_prompts()
    # one Stage I step at a learning rate too small to move the head: what is saved is the start
    params = PRMParams(stage1_steps=1, stage2_steps=0, stage1_learning_rate=1e-12, stage2_learning_rate=1e-12,
                       seed=3)
    train_prm(traces, prompts, str(tiny_model_dir), tmp_path / "prm", params, device="cpu")
    trained = load_file(tmp_path / "prm" / "model.safetensors")["score.weight"]
    untrained = untrained_scorer(str(tiny_model_dir), params, device="cpu")
    assert torch.allclose(untrained.model.score.weight.detach(), trained, atol=1e-8)
    other_seed = untrained_scorer(str(tiny_model_dir), params.model_copy(update={"seed": 4}), device="cpu")
    assert not torch.allclose(other_seed.model.score.weight.detach(), trained, atol=1e-3)
    assert untrained.max_length == params.max_length
    assert [len(s) for s in untrained.score([prompts["q0"]], [traces[0].steps])] == [2]


def test_both_stages_see_the_same_batches_in_the_same_order(tiny_model_dir, tmp_path):
    """What makes `stage_losses` compare the stages: at a learning rate too small to change the model,
    Stage II's step-k loss is Stage I's step-k loss (a different batch would give another loss)."""
    traces, prompts = traces_and_prompts()
    params = PRMParams(stage1_steps=4, stage2_steps=4, stage1_learning_rate=1e-12, stage2_learning_rate=1e-12,
                       batch_questions=1)
    result = train_prm(traces, prompts, str(tiny_model_dir), tmp_path / "prm", params, device="cpu")
    losses = {stage: [h["loss"] for h in result.log_history if "loss" in h and h["stage"] == stage] for stage in (1, 2)}
    assert len(set(losses[1])) > 1  # the batches differ from each other
    assert losses[2] == pytest.approx(losses[1], abs=1e-6)
    summary = result.summary()
    assert summary["paired_steps"] == 4
    assert summary["stage2_loss_same_batches"] == pytest.approx(summary["stage1_loss_same_batches"], abs=1e-6)


@pytest.mark.parametrize("stage1, stage2, expected", [
    ([3.0, 1.0, 2.0], [2.0, 0.5], (2, 2.0, 1.25)),  # Stage I's third batch has no Stage II twin
    ([], [1.0, 2.0], (0, float("nan"), float("nan"))),  # Stage I resumed: nothing to compare
])
def test_stage_losses_pair_the_steps_both_stages_ran(stage1, stage2, expected):
    history = [{"loss": x, "step": i + 1, "stage": 1} for i, x in enumerate(stage1)]
    history += [{"loss": x, "step": i + 1, "stage": 2} for i, x in enumerate(stage2)]
    history.append({"train_loss": 9.0, "step": len(stage2), "stage": 2})
    out = stage_losses(history)
    assert out["paired_steps"] == expected[0]
    assert [out["stage1_loss_same_batches"], out["stage2_loss_same_batches"]] == pytest.approx(list(expected[1:]),
                                                                                              nan_ok=True)
