"""The paper's published numbers (Tables 8-13 of arXiv 2602.03955) and the headline recomputed from them.

The tables ship in `agentark_utils/data/paper_tables.csv`.

Columns: source_table, student, teacher, method (RSFT, DA, PAD; SFT for Table 8's answer-only
baseline), test_set, train_set, accuracy, student_base_accuracy (all in %). Cite the paper when
you reuse these numbers.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

MAIN_TABLES = ("Table 9", "Table 10", "Table 11", "Table 12", "Table 13")


def paper_tables() -> pd.DataFrame:
    """Every printed cell of Tables 8-13, with its gain over the student's base accuracy."""
    with resources.files("agentark_utils").joinpath("data/paper_tables.csv").open() as f:
        table = pd.read_csv(f)
    return table.assign(gain_points=table["accuracy"] - table["student_base_accuracy"],
                        relative_gain_pct=100 * (table["accuracy"] / table["student_base_accuracy"] - 1))


def mean_relative_gain(table: pd.DataFrame, method: str, teacher: str | None = None) -> float:
    """Mean relative gain (%) over the base, over the cells of Tables 9-13 for one method (and teacher)."""
    cells = table[table["source_table"].isin(MAIN_TABLES) & (table["method"] == method)]
    if teacher is not None:
        cells = cells[cells["teacher"] == teacher]
    if cells.empty:
        raise ValueError(f"no cells for method {method!r} and teacher {teacher!r}")
    return float(cells["relative_gain_pct"].mean())


def headline(table: pd.DataFrame | None = None) -> float:
    """The abstract's '+4.8 %': PAD with the Qwen3-32B teacher, mean relative gain over its 40 cells."""
    return mean_relative_gain(paper_tables() if table is None else table, "PAD", "Qwen3-32B")


def gains_by_method(table: pd.DataFrame, teacher: str = "Qwen3-32B", value: str = "relative_gain_pct") -> pd.DataFrame:
    """Mean gain per method and test set for one teacher (Tables 9-13), plus Table 8's answer-only
    SFT (one teacher): `value` is `relative_gain_pct` (the abstract's measure) or `gain_points`."""
    main = table[table["source_table"].isin(MAIN_TABLES) & (table["teacher"] == teacher)]
    answer_only = table[table["source_table"] == "Table 8"]
    rows = pd.concat([main, answer_only.assign(method="answer-only SFT")])
    return rows.groupby(["method", "test_set"], as_index=False)[value].mean()


# Table 1 (teacher Qwen3-32B, student Qwen3-0.6B, held-out GSM8K, 100 samples): reasoning-span
# average NLL and perplexity. The paper's RSFT pair is inconsistent (exp(0.4092) = 1.506, not 1.6388).
TABLE1_REASONING = {
    "single": {"avg_nll": 0.6529, "perplexity": 1.9211},
    "rsft": {"avg_nll": 0.4092, "perplexity": 1.6388},
    "da": {"avg_nll": 0.4449, "perplexity": 1.5603},
    "pad": {"avg_nll": 0.5876, "perplexity": 1.7996},
}

# Table 2 (teacher Qwen3-32B, student Qwen3-8B trained on GSM8K): TruthfulQA, scored with BLEU and
# ROUGE. The paper does not say which TruthfulQA variant, references or BLEU implementation it used.
TABLE2_TRUTHFULQA = {
    "single": {"bleu": 0.6034, "rouge1": 0.6144, "rouge2": 0.5704, "rougeL": 0.6132},
    "rsft": {"bleu": 0.6059, "rouge1": 0.6157, "rouge2": 0.5777, "rougeL": 0.6157},
    "da": {"bleu": 0.6353, "rouge1": 0.6389, "rouge2": 0.5961, "rougeL": 0.6401},
    "pad": {"bleu": 0.6634, "rouge1": 0.6659, "rouge2": 0.6414, "rougeL": 0.6573},
}
