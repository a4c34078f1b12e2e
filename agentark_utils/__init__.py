"""AgentArk, reproducible: distil a multi-agent debate into one student LLM.

One module per concept of the paper (arXiv 2602.03955):

- ``config``    typed, validated parameters for every stage (params.yaml sections)
- ``models``    the offline default model and resolution of any other model
- ``tasks``     the normalized question record, reasoning-gym tasks and the paper's datasets
- ``answers``   answer extractors (named filters) and graders: correct / wrong / unparsed
- ``prompts``   the prompt text, echo detection, and the one chat-template rendering
- ``backends``  generation backends: hf (default), vllm (GPU, lazy), openai (any server)
- ``debate``    Phase 1: multi-agent debate plus the single-agent and self-consistency baselines
- ``extraction`` Phase 2: A_correct filter, corrective traces, diverse selection, examples per strategy
- ``distill``   strategies 1 and 2 (R-SFT, DA) and the SFT baselines, on TRL's SFTTrainer
- ``evaluation`` one greedy generation per test question, graded, with cost
- ``metrics``   accuracy with Wilson CIs, paired differences (Newcombe CI, McNemar), cost per question
- ``store``     append-only JSONL that survives interruption, atomic JSON writes
- ``runs``      content fingerprints: what a stored result was made from, and resume that never reuses a stale one
- ``plots``     the seaborn figures
- ``stages``    runs a stage's notebook with Papermill after validating params.yaml
- ``results_diff`` what two results trees differ in, apart from timings (a refactor's check)
"""

__version__ = "0.1.0"
