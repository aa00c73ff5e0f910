"""The reward judge: an LLM on any OpenAI-compatible endpoint, asked two 0/1 questions during RL.

- Correctness, for a free-form answer the rules did not match: the evaluation's own question
  (`thyme.eval.judge.Judge.verdict`, replying `{"Correctness": 0|1}`), so "right" means the same in RL and
  in evaluation.
- Consistency, for a right answer: does the end of the reasoning reach that answer? Our prompt below,
  replying `{"Consistency": 0|1}`, asked through `Judge.ask`.

Both go through `thyme.eval.judge.Judge` (one HTTP client, retries with backoff, lenient reply parsing,
verdict cache, and it stops calling a dead endpoint). A verdict the judge cannot give (endpoint down,
unparseable reply, anything unexpected) is None: counted in `failures`, logged, and never raised, so a judge
hiccup cannot end a training run.

    settings = JudgeSettings(url="http://gpu-box:8000/v1", model="Qwen2.5-72B-Instruct")
    with RewardJudge.from_settings(settings) as judge:
        judge.correct(question, gold, prediction, choices)      # True / False / None
        judge.consistent(question, reasoning_tail, answer)      # True / False / None
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from thyme.eval.judge import Judge, judge_question
from thyme.eval.task import EvalSample

log = logging.getLogger(__name__)

CONSISTENCY_SYSTEM = (
    "You check whether a line of reasoning arrives at a stated answer. You reply with JSON only."
)
CONSISTENCY_PROMPT = """Below are a question, the last part of a model's reasoning about it, and the final
answer the model then gave.

Question:
{question}

End of the reasoning:
{reasoning}

Final answer:
{answer}

Decide whether the reasoning, as it ends, leads to this final answer: its last conclusion must be the same
value, option or statement as the final answer (wording may differ). It does not when the reasoning
concludes something else, gives no conclusion, or the final answer appears without support in it. Do not
judge whether the answer is true.
Reply with a JSON object and nothing else:
{{"Consistency": 1}} if the reasoning leads to the final answer, {{"Consistency": 0}} if not."""


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and what to ask it.

    url, model:    the endpoint's API root (http://host:8000/v1) and served model name.
    api_key_file:  a file holding the bearer token (None: no token). Keys never sit in configs.
    temperature:   0.1 as in the reference; max_tokens: reply budget (raise it for reasoning judges).
    timeout_s, max_retries: per request; attempts: questions per verdict when replies do not parse.
    max_failures:  endpoint failures in a row after which no more calls are made (verdicts None).
    workers:       rows judged concurrently per reward call.
    accuracy:      ask the judge about free-form answers the rules did not match.
    consistency:   ask for the consistency bonus of right answers.
    cache_path:    a JSONL verdict cache that a resumed run reuses (None: memory only).
    """

    url: str
    model: str
    api_key_file: str | None = None
    temperature: float = 0.1
    max_tokens: int = 256
    timeout_s: float = 60.0
    max_retries: int = 3
    attempts: int = 2
    max_failures: int = 20
    workers: int = 8
    accuracy: bool = True
    consistency: bool = True
    cache_path: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"judge.url={self.url!r} must be an http(s) URL such as http://host:8000/v1")
        if not self.model:
            raise ValueError("judge.model is empty; give the served model name")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"judge.temperature={self.temperature} must be in [0, 2]")
        for name in ("max_tokens", "attempts", "max_failures", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"judge.{name}={getattr(self, name)} must be >= 1")
        if self.timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("judge.timeout_s must be > 0 and judge.max_retries >= 0")
        if not (self.accuracy or self.consistency):
            raise ValueError("judge.accuracy and judge.consistency are both off; remove the judge instead")


class RewardJudge:
    """The two reward questions on one `thyme.eval.judge.Judge`; thread-safe.

    accuracy / consistency: which questions are asked (the parts read these).
    failures: verdicts asked for that came back None, since construction.
    """

    def __init__(self, judge: Judge, *, accuracy: bool = True, consistency: bool = True, workers: int = 8):
        self.judge = judge
        self.accuracy = accuracy
        self.consistency = consistency
        self.workers = workers
        self._lock = threading.Lock()
        self.asked = 0
        self.failures = 0

    @classmethod
    def from_settings(cls, settings: JudgeSettings) -> RewardJudge:
        api_key = None
        if settings.api_key_file is not None:
            path = Path(settings.api_key_file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"judge.api_key_file {path} does not exist; create it or set null")
            api_key = path.read_text(encoding="utf-8").strip()
        judge = Judge(
            settings.url,
            settings.model,
            api_key,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            attempts=settings.attempts,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            max_failures=settings.max_failures,
            cache_path=Path(settings.cache_path) if settings.cache_path else None,
        )
        return cls(
            judge, accuracy=settings.accuracy, consistency=settings.consistency, workers=settings.workers
        )

    def correct(
        self, question: str, gold: str, prediction: str, choices: Mapping[str, str] | None = None
    ) -> bool | None:
        """Whether `prediction` answers `question` as `gold` does (the evaluation's judge question)."""
        sample = EvalSample(id="", question=question, answer=gold, choices=dict(choices) if choices else None)
        shown_question, shown_gold = judge_question(sample)
        return self._call(self.judge.verdict, shown_question, shown_gold, prediction)

    def consistent(self, question: str, reasoning: str, answer: str) -> bool | None:
        """Whether the reasoning (its last part) arrives at `answer`."""
        prompt = CONSISTENCY_PROMPT.format(
            question=question or "(not given)", reasoning=reasoning, answer=answer
        )
        return self._call(self.judge.ask, CONSISTENCY_SYSTEM, prompt, key="Consistency")

    def _call(self, ask, *args, **kwargs) -> bool | None:
        try:
            verdict = ask(*args, **kwargs)
        except Exception as exc:  # a judge problem must never end training: count it, log it, go on
            log.warning("the reward judge failed (%s: %s); this verdict is skipped", type(exc).__name__, exc)
            verdict = None
        with self._lock:
            self.asked += 1
            self.failures += verdict is None
        return verdict

    def describe(self) -> dict:
        """What a run records about its judge (never the key)."""
        return {**self.judge.describe(), "accuracy": self.accuracy, "consistency": self.consistency}

    def close(self) -> None:
        self.judge.close()

    def __enter__(self) -> RewardJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
