"""An optional LLM judge: a model behind any OpenAI-compatible endpoint says whether an answer is correct.

The released RL accuracy reward asks a 72B model behind an OpenAI-compatible endpoint for
`{"Correctness": 0|1}` at temperature 0.1 once the rule-based checks have failed; this does the same for
evaluation, through the project's own HTTP client (`OpenAIBackend`, standard library only):

    judge = Judge("http://gpu-box:8000/v1", "Qwen2.5-72B-Instruct", cache_path=out / "judge.jsonl")
    judge.verdict(question, gold, prediction)        # True / False / None (endpoint failed: use the rules)
    score, judged = score_with_judge(task, judge, prediction, sample)   # rules first, the judge for the rest
    judge.ask(system, prompt, key="Consistency")     # a 0/1 question of the caller's own (RL rewards)

Verdicts are cached by a hash of (judge model, prompt, question, gold, prediction), in memory and, with
`cache_path`, in a JSONL file that resumed runs reuse. Replies are parsed leniently (prose or a reasoning
block around the JSON, "Correctness: 1", quoted numbers); an unparseable reply is asked again up to
`attempts` times. Endpoint failures are retried by the client (`max_retries`, with backoff); after that the
verdict is None, and after `max_failures` such failures in a row the judge stops calling and says so once,
so a dead endpoint costs one timeout per sample only a few times.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from thyme.agent.backends.base import BackendError, GenerationRequest
from thyme.agent.backends.openai import OpenAIBackend
from thyme.agent.config import SamplingParams
from thyme.agent.conversation import Conversation
from thyme.eval.task import EvalSample, TaskSpec
from thyme.protocol import TextPart

log = logging.getLogger(__name__)

JUDGE_SYSTEM = "You grade answers against reference answers. You reply with JSON only."
JUDGE_PROMPT = """Decide whether the generated answer to the question below is correct, given the reference.

Question:
{question}

Reference answer:
{gold}

Generated answer:
{prediction}

The generated answer is correct when it says the same as the reference answer: the same option, an equal
number or expression, or the same meaning in other words. Extra explanation around a correct answer is fine.
Reply with a JSON object and nothing else:
{{"Correctness": 1}} if it is correct, {{"Correctness": 0}} if not."""
PROMPT_HASH = hashlib.sha256((JUDGE_SYSTEM + "\n" + JUDGE_PROMPT).encode()).hexdigest()[:12]

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_OBJECT_RE = re.compile(r"\{[^{}]*\}")
_TRUTHY = {"1": 1, "1.0": 1, "true": 1, "yes": 1, "correct": 1, "0": 0, "0.0": 0, "false": 0, "no": 0}


def parse_verdict(reply: str, key: str = "Correctness") -> int | None:
    """1 or 0 from a judge's reply (`{"<key>": 0|1}`), or None when it states no verdict; the last verdict
    stated wins. The key is matched case-insensitively."""
    text = _THINK_RE.sub(" ", reply)
    wanted = key.strip().lower()
    found: list[int] = []
    for match in _OBJECT_RE.finditer(text):
        try:
            data = json.loads(match.group(0))
        except ValueError:
            data = None
        if isinstance(data, dict):
            value = next((v for k, v in data.items() if str(k).strip().lower() == wanted), None)
            verdict = _as_verdict(value)
            if verdict is not None:
                found.append(verdict)
    if found:
        return found[-1]
    loose = _loose_re(wanted).findall(text)
    return _TRUTHY[loose[-1].lower()] if loose else None


@functools.cache
def _loose_re(key: str) -> re.Pattern[str]:
    """`Key: 1`, `'Key': 0`, `KEY = true`: a verdict written outside valid JSON."""
    return re.compile(re.escape(key) + r"\W{0,4}?\s*[:=]\s*[\"']?\s*(1|0|true|false|yes|no)\b", re.IGNORECASE)


def _as_verdict(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        return _TRUTHY.get(value.strip().lower())
    return None


def judge_question(sample: EvalSample) -> tuple[str, str]:
    """(question, gold) as the judge sees them: options listed, an option letter gold with its text."""
    question = sample.question
    gold = sample.answer
    if sample.choices:
        question += "\n" + "\n".join(f"{letter}. {text}" for letter, text in sample.choices.items())
        if gold in sample.choices:
            gold = f"{gold}. {sample.choices[gold]}"
    return question, gold


class Judge:
    """Correctness verdicts from a model on an OpenAI-compatible endpoint.

    base_url:     the API root (http://host:8000/v1); model: the served model name; api_key: a bearer token.
    temperature:  0.1 as in the reference; max_tokens: reply budget (raise it for reasoning judges).
    attempts:     questions asked per verdict when replies cannot be parsed.
    max_retries:  the client's retries per request on connection errors, timeouts, 429 and 5xx.
    max_failures: endpoint failures in a row after which the judge stops calling (verdicts None).
    cache_path:   a JSONL file of verdicts, read at start and appended to (None: memory only).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        temperature: float = 0.1,
        max_tokens: int = 256,
        attempts: int = 3,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_failures: int = 5,
        cache_path: Path | None = None,
    ) -> None:
        if attempts < 1 or max_failures < 1:
            raise ValueError("attempts and max_failures must be >= 1")
        self.base_url = base_url
        self.model = model
        self.params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens)
        self.attempts = attempts
        self.max_failures = max_failures
        self._backend = OpenAIBackend(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            continuation="never",
        )
        self._lock = threading.Lock()
        self._failures = 0
        self._cache: dict[str, bool] = {}
        self.cache_path = Path(cache_path) if cache_path is not None else None
        if self.cache_path is not None and self.cache_path.is_file():
            self._cache.update(_read_cache(self.cache_path))

    # -- the card and the lifecycle ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What the protocol card records (never the key)."""
        return {
            "model": self.model,
            "url": self.base_url,
            "temperature": self.params.temperature,
            "max_tokens": self.params.max_new_tokens,
            "prompt_sha": PROMPT_HASH,
        }

    @property
    def disabled(self) -> bool:
        """The endpoint failed `max_failures` times in a row: no more calls are made."""
        return self._failures >= self.max_failures

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- verdicts ---------------------------------------------------------------------------------------
    def verdict(self, question: str, gold: str, prediction: str) -> bool | None:
        """Whether `prediction` answers `question` as `gold` does; None when the judge could not say."""
        prompt = JUDGE_PROMPT.format(question=question, gold=gold, prediction=prediction)
        return self._ask(self._key(question, gold, prediction), JUDGE_SYSTEM, prompt, "Correctness")

    def ask(self, system: str, prompt: str, *, key: str = "Correctness") -> bool | None:
        """A 0/1 question of the caller's own, whose prompt asks for `{"<key>": 0|1}`: the answer as a bool,
        or None when the judge could not say. Cached, retried and failure-counted like `verdict`."""
        blob = json.dumps([self.model, system, prompt, key], ensure_ascii=False)
        return self._ask(hashlib.sha256(blob.encode()).hexdigest(), system, prompt, key)

    def _ask(self, cache_key: str, system: str, prompt: str, key: str) -> bool | None:
        with self._lock:
            if cache_key in self._cache:
                return self._cache[cache_key]
        if self.disabled:
            return None
        request = GenerationRequest(
            Conversation(system=system, user=(TextPart(prompt),)), self.params, stops=()
        )
        for attempt in range(self.attempts):
            try:
                [generation] = self._backend.generate([request])
            except BackendError as exc:
                self._failed(exc)
                return None
            with self._lock:
                self._failures = 0
            verdict = parse_verdict(generation.text, key)
            if verdict is not None:
                self._store(cache_key, bool(verdict))
                return bool(verdict)
            log.debug("judge reply %d has no verdict: %r", attempt + 1, generation.text[:200])
        log.warning(
            "the judge gave no parseable %r verdict in %d replies; going on without it for this one",
            key,
            self.attempts,
        )
        return None

    def score(self, prediction: str | None, sample: EvalSample) -> float | None:
        """1.0 / 0.0 by the judge for a sample; 0.0 without asking when there is no prediction; None when
        the judge could not say (the caller falls back to the task's rules)."""
        if prediction is None or not prediction.strip():
            return 0.0
        question, gold = judge_question(sample)
        verdict = self.verdict(question, gold, prediction)
        return None if verdict is None else float(verdict)

    # -- internals --------------------------------------------------------------------------------------
    def _key(self, question: str, gold: str, prediction: str) -> str:
        blob = json.dumps([self.model, PROMPT_HASH, question, gold, prediction], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _store(self, key: str, verdict: bool) -> None:
        with self._lock:
            self._cache[key] = verdict
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"key": key, "correct": verdict}) + "\n")

    def _failed(self, exc: BackendError) -> None:
        with self._lock:
            self._failures += 1
            stopping = self._failures == self.max_failures
        log.warning("the judge at %s failed (%s); scoring this sample by rules", self.base_url, exc)
        if stopping:
            log.error(
                "the judge failed %d times in a row; scoring the remaining samples by rules only "
                "(check the endpoint and run again to judge them)",
                self.max_failures,
            )


def _read_cache(path: Path) -> dict[str, bool]:
    """Verdicts of a cache file; a torn last line (a killed run) is skipped."""
    verdicts: dict[str, bool] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            verdicts[str(record["key"])] = bool(record["correct"])
        except (ValueError, KeyError, TypeError):
            continue
    return verdicts


def score_with_judge(
    task: TaskSpec, judge: Judge | None, prediction: str | None, sample: EvalSample
) -> tuple[float, bool]:
    """(score, judged): the task's rules first; a judge, when the task uses one, for what they reject.

    As in the reference, the judge only adds credit the rules missed ("one half" for "0.5" written oddly);
    when it cannot say, the rule score stands.
    """
    rule = float(task.score(prediction, sample))
    if judge is None or not task.judge or rule >= 1.0 or prediction is None:
        return rule, False
    credit = judge.score(prediction, sample)
    if credit is None:
        return rule, False
    return max(rule, credit), True
