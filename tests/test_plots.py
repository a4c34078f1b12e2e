"""Figures whose data a reader could misread: what each line of them holds."""

import matplotlib

matplotlib.use("Agg")

from agentark_utils import plots


def test_loss_curve_draws_each_prm_stage_as_its_own_line():
    # both stages count their steps from 1: one line would average Stage I and II at each step
    history = [{"step": s, "loss": 3.0 - 0.1 * s, "stage": 1} for s in (1, 2, 3)]
    history += [{"step": s, "loss": 1.0 + 0.1 * s, "stage": 2} for s in (1, 2, 3)]
    history.append({"step": 3, "train_loss": 2.0, "stage": 2})  # a summary record, not a step
    ax = plots.loss_curve(history, "PRM").axes[0]
    lines = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines if len(line.get_xdata())]
    assert sorted(lines) == sorted([([1, 2, 3], [2.9, 2.8, 2.7]), ([1, 2, 3], [1.1, 1.2, 1.3])])


def test_loss_curve_without_stages_is_one_line():
    ax = plots.loss_curve([{"step": s, "loss": float(s)} for s in (1, 2)], "SFT").axes[0]
    assert [list(line.get_ydata()) for line in ax.lines if len(line.get_xdata())] == [[1.0, 2.0]]


def test_auroc_intervals_plot_each_row_with_its_interval():
    import pandas as pd

    table = pd.DataFrame({"score": ["PRM", "fewer steps"], "auroc": [0.7, 0.6], "ci_low": [0.6, 0.4],
                          "ci_high": [0.8, 0.7]})
    fig = plots.auroc_intervals({"steps": table, "traces": table.rename(columns={"score": "aggregation"})})
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["PRM", "fewer steps"]
