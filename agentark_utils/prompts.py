"""Prompt text and chat rendering: what every model is asked, and how a conversation becomes its input.

The question prompt (students are trained and evaluated on it), the debate's revision and
summarizer prompts, the detection of outputs that echo them, and `render_chat`, which renders a
conversation with a tokenizer's chat template for this package's own model calls (hf backend, PRM,
perplexity). vLLM and OpenAI-compatible servers render it themselves from `template_kwargs`, and
TRL's trainers render the training rows themselves.
"""

from __future__ import annotations

import re
from functools import lru_cache

from agentark_utils.tasks import OPTION_LETTERS, Question

# "a blank line between steps" is steps.STEP_SEPARATOR: the PRM and GRPO cut traces there.
INSTRUCTIONS = {
    "number": "Solve it step by step, with a blank line between steps, then write the final answer on the last "
              "line as 'Final Answer: <number>'.",
    "math": "Solve it step by step, with a blank line between steps, then write the final answer on the last "
            "line as 'Final Answer: <answer>'.",
    "choice": "Think step by step, with a blank line between steps, then write the final answer on the last "
              "line as 'Final Answer: <letter>'.",
}


def question_body(q: Question) -> str:
    """The question with its options, if it has any."""
    if not q.choices:
        return q.question
    return q.question + "\n" + "\n".join(f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(q.choices))


def question_prompt(q: Question) -> str:
    return f"{question_body(q)}\n{INSTRUCTIONS[q.answer_format]}"


def _solutions(texts: list[str], label: str) -> str:
    return "\n\n".join(f"{label} {j + 1}:\n{text.strip()}" for j, text in enumerate(texts))


def revision_prompt(q: Question, peer_texts: list[str]) -> str:
    """Round k > 1: the peers' previous answers, then the original problem again."""
    if not peer_texts:  # a lone agent reviews its own answer
        return f"Check your solution above for mistakes and give an updated solution.\n{question_prompt(q)}"
    return (
        f"Here are the solutions of other agents to the same problem:\n\n{_solutions(peer_texts, 'Agent')}\n\n"
        "Use them as additional advice: look for mistakes in their reasoning and in yours, "
        f"then give an updated solution.\n{question_prompt(q)}"
    )


def summarizer_prompt(q: Question, final_texts: list[str]) -> str:
    """The summarizer is asked to choose among the agents' answers, not to solve the problem again;
    the problem comes last, as small models need."""
    return (
        f"Several agents solved a problem. Their final solutions:\n\n{_solutions(final_texts, 'Solution')}\n\n"
        f"Problem: {question_body(q)}\n"
        "Which of their answers is correct? Check their steps, choose one of the agents' answers, and write it "
        "on the last line as 'Final Answer: <answer>'."
    )


# Stand-ins for what a rendered prompt holds besides its own instructions: words no prompt uses.
PLACEHOLDERS = ("zzproblem", "zzoption", "zzpeer", "zzfinal")


def rendered_prompts() -> list[str]:
    """Every prompt rendered on a probe question (`PLACEHOLDERS` for its content): any change in
    their wording changes the fingerprint, and `echoes_prompt` spots outputs that repeat them."""
    problem, option, peer, final = PLACEHOLDERS
    probe = Question("probe", "probe", problem, "0", "number")
    choice = Question("probe", "probe", problem, "A", "choice", (option, option))
    return [question_prompt(probe), question_prompt(choice), revision_prompt(probe, [peer]),
            revision_prompt(probe, []), summarizer_prompt(probe, [final]), summarizer_prompt(choice, [final])]


ECHO_NGRAM = 6  # six consecutive words of an instruction: long enough that no real solution says them


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@lru_cache(maxsize=1)
def _prompt_ngrams() -> frozenset[tuple[str, ...]]:
    grams = set()
    for prompt in rendered_prompts():
        words = [w for w in _words(prompt) if w not in PLACEHOLDERS]
        grams.update(tuple(words[i : i + ECHO_NGRAM]) for i in range(len(words) - ECHO_NGRAM + 1))
    return frozenset(grams)


def echoes_prompt(text: str) -> bool:
    """True if the text repeats a run of the prompts' instructions (a small model often copies the
    revision prompt into its answer)."""
    words = _words(text)
    return any(tuple(words[i : i + ECHO_NGRAM]) in _prompt_ngrams() for i in range(len(words) - ECHO_NGRAM + 1))


def strip_echoes(text: str) -> str:
    """The text without the lines that echo the prompts: what peers and the summarizer read."""
    return "\n".join(line for line in text.splitlines() if not echoes_prompt(line)).strip()


# --- chat rendering -----------------------------------------------------------------------------

def user_turn(text: str) -> dict:
    return {"role": "user", "content": text}


def template_kwargs(enable_thinking: bool | None) -> dict:
    """Keyword arguments for the chat template: `enable_thinking` only when set (None: the
    template's own default), for the templates that read it (Qwen3); others ignore it."""
    return {} if enable_thinking is None else {"enable_thinking": enable_thinking}


def render_chat(tokenizer, conversation: list[dict], enable_thinking: bool | None = None) -> str:
    """The conversation as the tokenizer's chat template shows it to the model, ready for its answer."""
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True,
                                         **template_kwargs(enable_thinking))
