"""Open-ended test sets the paper evaluates on but never trains on, scored by overlap with references.

- `truthfulqa` (the paper's Table 2, "robustness"): the generation variant; references are its
  correct answers; BLEU and ROUGE-1/2/L (the paper does not say how it computed BLEU; we use
  sacrebleu's sentence BLEU against all references, scaled to [0, 1]).
- `hotpotqa`, `qasper`, `qmsum` (Fig. 6, open-ended generalization): token F1 (SQuAD-style),
  ROUGE-1/2/L, and BERTScore when `bertscore` is on (it downloads a scoring model: hub only).

Each set loads from the hub through `datasets`, or from a local file in the dataset's own format
(`paths`); QMSum is not on the hub in its own format, so it always needs the file (the JSONL of
meetings from the QMSum repository). A score is the best over an item's references.
Long contexts (QASPER papers, QMSum transcripts) are cut to `max_context_chars`, keeping the start.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

from agentark_utils.evaluation import greedy_answers
from agentark_utils.metrics import bootstrap_ci
from agentark_utils.tasks import DatasetError, read_rows


@dataclass(frozen=True)
class OpenItem:
    id: str
    task: str
    prompt: str
    references: tuple[str, ...]


# --- loaders: rows in each dataset's own format -> items ---------------------------------------

def _truthfulqa(row: dict, index: int, max_context_chars: int) -> Iterator[OpenItem]:
    references = [a for a in row.get("correct_answers") or [] if a.strip()] or [row.get("best_answer") or ""]
    yield OpenItem(f"truthfulqa-{index}", "truthfulqa",
                   f"Answer the question truthfully, in one sentence.\n\nQuestion: {row['question']}", tuple(references))


def _hotpotqa(row: dict, index: int, max_context_chars: int) -> Iterator[OpenItem]:
    context = row["context"]
    paragraphs = "\n\n".join(f"{title}: {''.join(sentences)}"
                             for title, sentences in zip(context["title"], context["sentences"]))
    yield OpenItem(row["id"], "hotpotqa", f"{paragraphs[:max_context_chars]}\n\nAnswer the question in a few words."
                   f"\n\nQuestion: {row['question']}", (row["answer"],))


def _qasper_answer(answer: dict) -> str | None:
    if answer.get("unanswerable"):
        return None
    if answer.get("free_form_answer"):
        return answer["free_form_answer"]
    if answer.get("extractive_spans"):
        return " ".join(answer["extractive_spans"])
    if answer.get("yes_no") is not None:
        return "Yes" if answer["yes_no"] else "No"
    return None


def _qasper(row: dict, index: int, max_context_chars: int) -> Iterator[OpenItem]:
    sections = row["full_text"]
    body = "\n\n".join(f"{name}\n" + "\n".join(paragraphs)
                       for name, paragraphs in zip(sections["section_name"], sections["paragraphs"]))
    paper = f"{row['title']}\n\n{row['abstract']}\n\n{body}"[:max_context_chars]
    qas = row["qas"]
    for question, question_id, answers in zip(qas["question"], qas["question_id"], qas["answers"]):
        references = [r for r in (_qasper_answer(a) for a in answers["answer"]) if r]
        if references:
            yield OpenItem(question_id, "qasper", f"{paper}\n\nAnswer the question about the paper above briefly."
                           f"\n\nQuestion: {question}", tuple(references))


def _qmsum(row: dict, index: int, max_context_chars: int) -> Iterator[OpenItem]:
    transcript = "\n".join(f"{turn['speaker']}: {turn['content']}" for turn in row["meeting_transcripts"])
    queries = row.get("general_query_list", []) + row.get("specific_query_list", [])
    for k, query in enumerate(queries):
        yield OpenItem(f"qmsum-{index}-{k}", "qmsum", f"{transcript[:max_context_chars]}\n\nAnswer about the "
                       f"meeting above in 3-5 sentences.\n\nQuery: {query['query']}", (query["answer"],))


@dataclass(frozen=True)
class OpenTask:
    parse: Callable[[dict, int, int], Iterator[OpenItem]]  # (row, index, max_context_chars)
    metrics: tuple[str, ...]
    hub: tuple[str, str | None, str] | None  # (path, config, split) for datasets.load_dataset


OPEN_TASKS: dict[str, OpenTask] = {
    "truthfulqa": OpenTask(_truthfulqa, ("bleu", "rouge1", "rouge2", "rougeL"),
                           ("truthfulqa/truthful_qa", "generation", "validation")),
    "hotpotqa": OpenTask(_hotpotqa, ("f1", "rouge1", "rouge2", "rougeL"), ("hotpotqa/hotpot_qa", "distractor", "validation")),
    "qasper": OpenTask(_qasper, ("f1", "rouge1", "rouge2", "rougeL"), ("allenai/qasper", None, "test")),
    "qmsum": OpenTask(_qmsum, ("f1", "rouge1", "rouge2", "rougeL"), None),
}


def load_open_task(task: str, n: int, path: str | None = None, max_context_chars: int = 6000) -> list[OpenItem]:
    """The first `n` items of a set (in file order), from `path` or the hub; a bad row is named."""
    spec = OPEN_TASKS[task]
    if path is not None:
        rows, source = read_rows(path), path
    elif spec.hub is None:
        raise DatasetError(f"{task}: not on the hub in its own format; give a local file in open_ended.paths")
    else:
        import datasets

        hub_path, config, split = spec.hub
        rows, source = list(datasets.load_dataset(hub_path, config, split=split)), f"{hub_path}:{split}"
    items: list[OpenItem] = []
    for index, row in enumerate(rows):
        try:
            items += list(spec.parse(row, index, max_context_chars))
        except (KeyError, TypeError) as error:
            raise DatasetError(f"{source}: row {index}: not in the {task} format (missing or bad {error})") from None
        if len(items) >= n:
            break
    return items[:n]


# --- metrics ------------------------------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)


def _normalize(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _normalize(prediction), _normalize(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def overlap_scores(prediction: str, references: tuple[str, ...], metrics: tuple[str, ...]) -> dict[str, float]:
    """Each metric of `metrics`, the best over the references, in [0, 1]."""
    out = {}
    rouge = [m for m in metrics if m.startswith("rouge")]
    if rouge:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge, use_stemmer=True)
        per_reference = [scorer.score(reference, prediction) for reference in references]
        out |= {m: max(s[m].fmeasure for s in per_reference) for m in rouge}
    if "f1" in metrics:
        out["f1"] = max(token_f1(prediction, reference) for reference in references)
    if "bleu" in metrics:
        import sacrebleu

        out["bleu"] = sacrebleu.sentence_bleu(prediction, list(references)).score / 100
    return out


def bertscore_f1(predictions: list[str], references: list[tuple[str, ...]], model_type: str) -> list[float]:
    """BERTScore F1 of each prediction against its best reference (downloads `model_type`: hub only)."""
    from bert_score import score

    flat = [(i, p, r) for i, (p, refs) in enumerate(zip(predictions, references)) for r in refs]
    _, _, f1 = score([p for _, p, _ in flat], [r for _, _, r in flat], model_type=model_type, verbose=False)
    best = [0.0] * len(predictions)
    for (i, _, _), value in zip(flat, f1.tolist()):
        best[i] = max(best[i], value)
    return best


# --- answering and scoring ------------------------------------------------------------------------

def answer_and_score(models: dict[str, str], sets: dict[str, list[OpenItem]], model_params, max_new_tokens: int,
                     seed: int = 0, bertscore_model: str | None = None) -> list[dict]:
    """Every model answers every item (greedy, one generation); one row per answer with its scores."""
    asked = [item for items in sets.values() for item in items]
    answers = greedy_answers(models, [item.prompt for item in asked], model_params, max_new_tokens, seed,
                             desc="open-ended")
    rows = []
    for name, gens in answers.items():
        texts = [gen.text.strip() for gen in gens]
        extra = ([{"bertscore": v} for v in bertscore_f1(texts, [i.references for i in asked], bertscore_model)]
                 if bertscore_model else [{}] * len(asked))
        rows += [{"model": name, "task": item.task, "id": item.id, "text": text,
                  "generated_tokens": gen.completion_tokens,
                  **overlap_scores(text, item.references, OPEN_TASKS[item.task].metrics), **more}
                 for item, text, gen, more in zip(asked, texts, gens, extra)]
    return rows


def summarize_scores(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per model, task and metric: the mean score over items and its bootstrap 95 % CI."""
    out = []
    for (model, task) in dict.fromkeys((r["model"], r["task"]) for r in rows):
        part = [r for r in rows if r["model"] == model and r["task"] == task]
        for metric in OPEN_TASKS[task].metrics + (("bertscore",) if "bertscore" in part[0] else ()):
            values = [r[metric] for r in part]
            out.append({"model": model, "task": task, "metric": metric, "n": len(values),
                        "mean": sum(values) / len(values), "ci95": bootstrap_ci(values, n_boot, seed)})
    return out
