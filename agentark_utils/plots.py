"""The seaborn figures. Each function returns the figure and, given a path, saves it as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import pandas as pd
import seaborn as sns

from agentark_utils.metrics import SYSTEMS, wilson_ci

LABELS = {"single": "single agent", "single_sampled": "single agent (sampled)", "self_consistency": "self-consistency",
          "debate": "debate (final answer)", "debate_majority": "debate (majority)"}


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def accuracy_by_round(table: pd.DataFrame, single_accuracy: float, final_accuracy: float,
                      path: str | Path | None = None):
    """Debate accuracy per round (mean agent, majority vote), its final answer, and the single agent."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(data=table, x="round", y="accuracy", hue="measure", marker="o", ax=ax)
    ax.axhline(single_accuracy, color="grey", linestyle="--", label="single agent (greedy)")
    ax.axhline(final_accuracy, color="green", linestyle=":", label="debate final answer")
    ax.set(xlabel="debate round", ylabel="accuracy", ylim=(0, 1), title="Debate accuracy by round",
           xticks=sorted(table["round"].unique()))
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)  # outside: never over the lines
    return _save(fig, path)


def cost_vs_accuracy(metrics: dict, path: str | Path | None = None):
    """Generated tokens per question against accuracy (95 % CI bars) for each system of the debate
    stage that ran on these questions."""
    points = pd.DataFrame([{"name": LABELS[system], **metrics[system]} for system in SYSTEMS if metrics[system]["n"]])
    return cost_accuracy_points(points, "Cost vs accuracy", path)


def cost_accuracy_points(points: pd.DataFrame, title: str, path: str | Path | None = None):
    """One point per system or model: generated tokens per question (log x) against accuracy with
    its 95 % CI.

    `points` has columns name, generated_tokens_per_question, accuracy, ci95 ([low, high]),
    calls_per_question.
    """
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    palette = sns.color_palette("deep", len(points))
    for color, (_, m) in zip(palette, points.iterrows()):
        low, high = m["ci95"]
        ax.errorbar(m["generated_tokens_per_question"], m["accuracy"], yerr=[[m["accuracy"] - low], [high - m["accuracy"]]],
                    fmt="o", color=color, capsize=4, label=f"{m['name']} ({m['calls_per_question']:.1f} calls)")
    ax.set_xscale("log")
    ax.set(xlabel="generated tokens per question (log scale)", ylabel="accuracy (95 % CI)", ylim=(0, 1),
           title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)  # outside: never over a point
    return _save(fig, path)


def accuracy_grid(results: pd.DataFrame, path: str | Path | None = None):
    """The headline figure: accuracy with 95 % CI of every system and student on every test set,
    coloured by kind (debate stage or student), each labelled with its generated tokens per
    question; the base student's accuracy dashed."""
    sns.set_theme(style="whitegrid")
    test_sets = list(dict.fromkeys(results["test_set"]))
    kinds = list(dict.fromkeys(results.get("kind", pd.Series(["model"] * len(results)))))
    colors = dict(zip(kinds, sns.color_palette("deep", len(kinds))))
    fig, axes = plt.subplots(1, len(test_sets), figsize=(5.2 * len(test_sets), 0.42 * results["model"].nunique() + 1.8),
                             squeeze=False)
    for ax, test_set in zip(axes[0], test_sets):
        rows = results[results["test_set"] == test_set].reset_index(drop=True)
        labels = [f"{m}  ({t:.0f} tok)" for m, t in zip(rows["model"], rows["generated_tokens_per_question"])]
        for i, row in rows.iterrows():
            kind = row.get("kind", "model")
            low, high = row["ci95"]
            ax.errorbar(row["accuracy"], i, xerr=[[row["accuracy"] - low], [high - row["accuracy"]]], fmt="o",
                        capsize=3, color=colors[kind], label=kind)
        ax.set_yticks(range(len(rows)), labels)
        base = rows.loc[rows["model"] == "base", "accuracy"]
        if len(base):
            ax.axvline(base.iloc[0], color="grey", linestyle="--", linewidth=1)
        ax.set(title=f"{test_set} (n={rows['n'].iloc[0]})", xlabel="accuracy (Wilson 95 % CI)", xlim=(0, 1))
        ax.invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), frameon=False)
    fig.suptitle("Single agent, debate and students on the same questions (dashed: base student; "
                 "labels: generated tokens per question)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def loss_curve(log_history: list[dict], title: str, path: str | Path | None = None,
               ylabel: str = "training loss (weighted completion NLL)"):
    """Training loss per optimizer step; one line per stage where the records carry a "stage" (the
    PRM's: each stage counts its steps from 1 and, with the same data seed, sees the same batches in
    the same order, so the lines compare the stages batch for batch)."""
    steps = pd.DataFrame([h for h in log_history if "loss" in h])
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    if steps.empty:  # nothing to train on: say so rather than draw nothing
        ax.text(0.5, 0.5, "no training step (no examples)", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title)
        return _save(fig, path)
    staged = "stage" in steps
    sns.lineplot(data=steps, x="step", y="loss", hue="stage" if staged else None, marker="o", ax=ax,
                 palette="deep" if staged else None)
    ax.set(xlabel="optimizer step" + (" within the stage" if staged else ""), ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def prm_scores(scores: pd.DataFrame, path: str | Path | None = None):
    """The PRM's step scores by step label, on the traces it trained on and on held-out traces.

    `scores` has columns split ("train" / "held-out"), label (0/1) and score.
    """
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    data = scores.assign(step=scores["label"].map({1: "correct step", 0: "wrong step"}))
    sns.boxplot(data=data, x="split", y="score", hue="step", hue_order=["correct step", "wrong step"], ax=ax,
                fliersize=2)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="", ylabel="PRM score sigma(R) per step", ylim=(0, 1),
           title="PRM step scores: a good PRM puts correct steps above wrong ones")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


GRPO_PANELS = {"reward_mean": "reward (mean over completions)", "frac_zero_std_groups": "groups with zero reward variance",
               "kl": "KL to the start policy", "completion_length": "completion length (tokens)"}


def auroc_intervals(tables: dict[str, pd.DataFrame], path: str | Path | None = None):
    """One panel per table (title -> table): each row's AUROC with its 95 % interval, named by the
    table's first column; the dotted line is chance (0.5)."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.2), squeeze=False)
    for ax, (title, table) in zip(axes[0], tables.items()):
        names = table.iloc[:, 0].astype(str).tolist()
        ax.errorbar(table["auroc"], names, xerr=[table["auroc"] - table["ci_low"], table["ci_high"] - table["auroc"]],
                    fmt="o", capsize=3)
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="AUROC (95 % question-bootstrap CI)", title=title)
    fig.tight_layout()
    return _save(fig, path)


def grpo_curves(log: pd.DataFrame, path: str | Path | None = None):
    """GRPO per step: reward (with its std as a band), dead groups, KL and completion length."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(2, 2, figsize=(8, 5.5), sharex=True)
    for ax, (column, label) in zip(axes.flat, GRPO_PANELS.items()):
        ax.plot(log["step"], log[column], marker="o")
        if column == "reward_mean":
            ax.fill_between(log["step"], log["reward_mean"] - log["reward_std"], log["reward_mean"] + log["reward_std"],
                            alpha=0.2)
        ax.set(title=label, xlabel="GRPO step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("GRPO against the PRM")
    fig.tight_layout()
    return _save(fig, path)


def _dodged_intervals(ax, rows: pd.DataFrame, row: str, group: str, value: str, low: str, high: str):
    """One horizontal point-and-CI per (row, group); the groups of a row side by side, zero marked."""
    labels, groups = list(dict.fromkeys(rows[row])), list(dict.fromkeys(rows[group]))
    palette = dict(zip(groups, sns.color_palette("deep", len(groups))))
    for k, name in enumerate(groups):
        part = rows[rows[group] == name].set_index(row).reindex(labels).dropna(subset=[value])
        y = [labels.index(label) + (k - (len(groups) - 1) / 2) * 0.22 for label in part.index]
        ax.errorbar(part[value], y, xerr=[part[value] - part[low], part[high] - part[value]], fmt="o", capsize=3,
                    color=palette[name], label=name)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=1)


def gains_side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, path: str | Path | None = None,
                       paper_teacher: str = "Qwen3-32B"):
    """The paper's Fig. 3 question, answered twice: gain in accuracy points over the base.

    `ours`: columns name, test_set, gain, low, high (a paired 95 % CI, points).
    `paper`: columns method, test_set, gain_points (mean over the printed cells of `paper_teacher`).
    """
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.4 * max(ours["name"].nunique(), 4) + 2.2),
                                      gridspec_kw={"wspace": 0.45})
    _dodged_intervals(left, ours, "name", "test_set", "gain", "low", "high")
    left.set(xlabel="gain over base (accuracy points, paired 95 % CI)",
             title="This repo's run")
    left.legend(fontsize=8, loc="lower right")
    sns.barplot(data=paper, y="method", x="gain_points", hue="test_set", ax=right, orient="h")
    right.axvline(0, color="grey", linewidth=1)
    right.set(xlabel="mean gain over base (accuracy points)", ylabel="",
              title=f"Paper (Tables 9-13, {paper_teacher} teacher; answer-only: Table 8)")
    right.legend(fontsize=8, title="test set", loc="lower right")
    return _save(fig, path)


def grid_heatmaps(ours: pd.DataFrame, paper: pd.DataFrame, path: str | Path | None = None):
    """Tables 9-13 as pictures: the paper's gains per student x (method, train set), one panel per
    test set, beside our accuracy per model x test set.

    `ours`: columns model, test_set, accuracy. `paper`: the rows of `paper.paper_tables()` to show.
    """
    sns.set_theme(style="white")
    test_sets = sorted(paper["test_set"].unique())
    fig, axes = plt.subplots(1, len(test_sets) + 1, figsize=(6 * len(test_sets) + 4.5, 4.2),
                             gridspec_kw={"width_ratios": [3] * len(test_sets) + [1.6]})
    for ax, test_set in zip(axes, test_sets):
        cells = paper[paper["test_set"] == test_set]
        table = cells.pivot_table(index="student", columns=["method", "train_set"], values="gain_points")
        sns.heatmap(table, ax=ax, cmap="RdBu", center=0, annot=True, fmt=".1f", annot_kws={"size": 6},
                    cbar_kws={"label": "gain over base (points)"})
        ax.set(title=f"Paper, test on {test_set}: gain by method / train set", xlabel="", ylabel="")
        ax.tick_params(axis="x", labelsize=7)
    table = ours.pivot_table(index="model", columns="test_set", values="accuracy", sort=False)
    sns.heatmap(table, ax=axes[-1], cmap="viridis", vmin=0, vmax=1, annot=True, fmt=".2f",
                cbar_kws={"label": "accuracy"})
    axes[-1].set(title="This repo: accuracy", xlabel="", ylabel="")
    axes[-1].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return _save(fig, path)


def robustness_changes(rows: pd.DataFrame, path: str | Path | None = None):
    """Change in accuracy under each perturbation (paired 95 % CI), per model."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * rows["model"].nunique() + 1.8))
    rows = rows.assign(low=rows["change_ci95"].str[0], high=rows["change_ci95"].str[1])
    _dodged_intervals(ax, rows, "model", "perturbation", "change", "low", "high")
    ax.set(xlabel="accuracy change vs the same questions unperturbed (paired 95 % CI)",
           title="Robustness: in-domain test questions, perturbed")
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def reasoning_perplexity(ours: pd.DataFrame, paper: pd.DataFrame, path: str | Path | None = None):
    """Table 1 as a picture: avg NLL of the gold reasoning span per model, ours (bootstrap CI) and the paper's.

    `ours`: model, avg_nll, low, high. `paper`: model, avg_nll.
    """
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.4 * len(ours) + 2), gridspec_kw={"wspace": 0.4})
    left.errorbar(ours["avg_nll"], ours["model"], xerr=[ours["avg_nll"] - ours["low"], ours["high"] - ours["avg_nll"]],
                  fmt="o", capsize=3)
    left.invert_yaxis()
    left.set(xlabel="avg NLL per reasoning token (95 % CI; lower = more likely)",
             title="This repo: gold arithmetic reasoning, test split")
    sns.barplot(data=paper, y="model", x="avg_nll", ax=right, orient="h", color=sns.color_palette("deep")[1])
    right.set(xlabel="avg NLL per reasoning token", ylabel="", title="Paper Table 1 (Qwen3-0.6B student, GSM8K)")
    return _save(fig, path)


def scaling_curves(points: pd.DataFrame, test_set: str, base_accuracy: float, path: str | Path | None = None):
    """The paper's Figs. 5 and 4 side by side: accuracy against training questions, and against agents.

    `points`: columns axis ("data" or "agents"), strategy, x (training questions or agents),
    accuracy, ci_low, ci_high. The base model is a dashed line in both panels.
    """
    sns.set_theme(style="whitegrid")
    axes_names = [a for a in ("data", "agents") if a in set(points["axis"])]
    fig, axes = plt.subplots(1, len(axes_names), figsize=(6 * len(axes_names), 4), squeeze=False, sharey=True)
    strategies = list(dict.fromkeys(points["strategy"]))
    palette = dict(zip(strategies, sns.color_palette("deep", len(strategies))))
    labels = {"data": "training questions", "agents": "agents in the debate that made the training data"}
    for ax, axis in zip(axes[0], axes_names):
        for strategy in strategies:
            line = points[(points["axis"] == axis) & (points["strategy"] == strategy)].sort_values("x")
            ax.errorbar(line["x"], line["accuracy"],
                        yerr=[line["accuracy"] - line["ci_low"], line["ci_high"] - line["accuracy"]],
                        fmt="o-", capsize=3, color=palette[strategy], label=strategy)
        ax.axhline(base_accuracy, color="grey", linestyle="--", linewidth=1, label="base model")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel=labels[axis], ylim=(0, 1), title=f"{'Data' if axis == 'data' else 'Agents'} scaling")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"accuracy on {test_set} (95 % CI)")
    return _save(fig, path)


def open_ended_scores(summary: pd.DataFrame, paper_truthfulqa: pd.DataFrame, path: str | Path | None = None):
    """Mean overlap score (95 % CI) per metric and model, one panel per open-ended set, and the paper's Table 2.

    `summary`: columns model, task, metric, n, mean, ci95 (open_ended.summarize_scores); empty when no
    set was configured, and the first panel says so. `paper_truthfulqa`: columns model, metric, score.
    """
    sns.set_theme(style="whitegrid")
    tasks = list(dict.fromkeys(summary["task"])) if len(summary) else []
    n_panels = max(len(tasks), 1) + 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 3.8), squeeze=False)
    if not tasks:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "This repo: no open-ended set configured\n(open_ended.tasks needs a hub or local files)",
                        ha="center", va="center")
    for ax, task in zip(axes[0], tasks):
        part = summary[summary["task"] == task]
        part = part.assign(value=part["mean"], low=part["ci95"].str[0], high=part["ci95"].str[1])
        _dodged_intervals(ax, part, "metric", "model", "value", "low", "high")
        ax.set(xlabel="mean score over items (95 % CI)", xlim=(0, 1), title=f"This repo: {task} (n = {part['n'].iloc[0]})")
        ax.legend(fontsize=8, title="model")
    paper_ax = axes[0][-1]
    sns.barplot(data=paper_truthfulqa, y="metric", x="score", hue="model", ax=paper_ax, orient="h")
    paper_ax.set(xlabel="score", ylabel="", xlim=(0, 1), title="Paper Table 2: TruthfulQA (Qwen3-8B student)")
    paper_ax.legend(fontsize=8, title="model", loc="lower right")
    return _save(fig, path)


def calibration_sweep(table: pd.DataFrame, path: str | Path | None = None):
    """Per calibration setting: the greedy single agent, the debate's final answer and its majority
    vote, with 95 % Wilson CIs, on the same held-out questions."""
    sns.set_theme(style="whitegrid")
    systems = {"single": "single agent (greedy)", "debate": "debate (final answer)", "debate_majority": "debate (majority)"}
    labels = [f"{r.task}, T={r.temperature}, {r.peer_view}, {r.n_agents}x{r.rounds}" for r in table.itertuples()]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(table) + 1.6))
    for offset, (column, name) in zip((-0.2, 0.0, 0.2), systems.items()):
        for i, row in table.iterrows():
            low, high = wilson_ci(round(row[column] * row["n"]), row["n"])
            ax.errorbar(row[column], i + offset, xerr=[[row[column] - low], [high - row[column]]], fmt="o", capsize=3,
                        color=sns.color_palette("deep")[list(systems).index(column)], label=name if i == 0 else None)
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    ax.set(xlabel="accuracy on held-out questions (Wilson 95 % CI)", xlim=(0, 1),
           title="Calibration: does the debate beat the single agent?")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    return _save(fig, path)


def pad_sweep(table: pd.DataFrame, chosen: float, path: str | Path | None = None):
    """PAD's accuracy on the validation questions per GRPO learning rate (Wilson 95 % CIs), beside the
    base model's on the same questions; the chosen rate marked, answers changed written at each point."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    base = table.iloc[0]
    ax.axhspan(base["base_low"], base["base_high"], color="grey", alpha=0.2)
    ax.axhline(base["base"], color="grey", label="base (no GRPO), 95 % CI")
    ax.errorbar(table["learning_rate"], table["pad"], yerr=[table["pad"] - table["pad_low"], table["pad_high"] - table["pad"]],
                fmt="o-", capsize=3, color=sns.color_palette("deep")[3], label="PAD student")
    for row in table.itertuples():
        ax.annotate(f"{row.answers_changed} changed", (row.learning_rate, row.pad_high), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=7)
    ax.axvline(chosen, color="black", linestyle=":", label=f"chosen: {chosen:g}")
    top = max(table["pad_high"].max(), base["base_high"]) + 0.06  # room for the labels above the bars
    ax.set(xscale="log", xlabel="GRPO learning rate", ylim=(0, top),
           ylabel=f"accuracy, {int(base['n'])} validation questions", title="PAD's step size, chosen on held-out questions")
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)
