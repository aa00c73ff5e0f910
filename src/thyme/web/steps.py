"""What the page shows of one run: the loop's typed events turned into chat messages, a gallery and an answer.

The agent loop yields `ModelText`, `CodeCall`, `Observation`, `Resample`, `Error` and `Final` events
(`thyme.agent.events`); `StepView` consumes them one by one, as `thyme run`'s `EventPrinter` does for a
terminal, and holds what the page draws:

- `chat()`: the transcript as Gradio chat messages: the question (the page shows the image beside it), then
  per step the model's reasoning (Markdown), the code it wrote (a fenced Python block, which the chatbot
  highlights), the sandbox's output and each image it produced, and the answer. A step still being
  generated is shown as it grows (`add_text`, with a token-streaming backend).
- `images`: every image the code produced, in order, captioned by step (the gallery).
- `answer`, `status`: the extracted answer and one line about where the run is.

No Gradio import here: messages are plain dicts in Gradio's "messages" format (`role`, `content`, optional
`metadata.title`, which draws the message as a titled, open box), so the conversion is tested without a page.
What the model or its code wrote is untrusted: HTML in it is escaped (shown, never interpreted), and code and
output go in fences longer than any backtick run inside them.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from thyme.agent.events import CodeCall, Error, Event, Final, ModelText, Observation, Resample
from thyme.protocol import AnswerSegment, CodeSegment, SandboxOutputSegment, TextSegment, parse_assistant

Message = dict[str, Any]


def fenced(text: str, language: str = "") -> str:
    """`text` as a Markdown code block whose fence no backtick run inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def prose(text: str) -> str:
    """Model-written prose for Markdown: HTML escaped so that it shows as written and never runs."""
    return html.escape(text.strip(), quote=False)


def _titled(title: str, content: str | list[Any], log: str | None = None) -> Message:
    metadata: dict[str, Any] = {"title": title}
    if log:
        metadata["log"] = log
    return {"role": "assistant", "content": content, "metadata": metadata}


@dataclass
class StepView:
    """The page's picture of one run, updated event by event (see the module docstring)."""

    question: str
    messages: list[Message] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (path, caption) for the gallery
    answer: str | None = None
    status: str = "waiting for the model"
    done: bool = False
    live: str = ""  # the text of the step being generated (token-streaming backends), until its ModelText
    step: int = 1  # the step being generated

    def __post_init__(self) -> None:
        self.messages.append({"role": "user", "content": self.question})

    def chat(self) -> list[Message]:
        """The transcript, with the step being generated (if any text came yet) as its last message."""
        if not self.live:
            return list(self.messages)
        state = "stopped here" if self.done else "generating"
        return [*self.messages, _titled(f"step {self.step} · {state}", fenced(self.live, "text"))]

    def stopped(self) -> None:
        """The run was stopped before it ended (the text of a cut step stays, marked so)."""
        self.done = True
        self.status = f"stopped at step {self.step}"

    def add_text(self, delta: str) -> None:
        """Text the model just generated in the current step (before the step's `ModelText` arrives)."""
        self.live += delta
        self.status = f"step {self.step}: generating"

    def add(self, event: Event) -> None:
        """One event of the loop, in the order the loop yields them."""
        if isinstance(event, ModelText):
            self._model_text(event)
        elif isinstance(event, CodeCall):
            self.messages.append(_titled(f"step {event.step} · code", fenced(event.code, "python")))
            self.status = f"step {event.step}: running the code in the sandbox"
        elif isinstance(event, Observation):
            self._observation(event)
        elif isinstance(event, Resample):
            self.step = event.step
            reason = f"attempt {event.attempt}: {prose(event.reason)}"
            self.messages.append(_titled(f"step {event.step} · rolled back, generating again", reason))
        elif isinstance(event, Error):
            message = f"**{event.category} error**: {prose(event.message)}"
            self.messages.append(_titled(f"step {event.step} · error", message))
        elif isinstance(event, Final):
            self._final(event)

    def _model_text(self, event: ModelText) -> None:
        self.live = ""
        self.step = event.step + 1
        parts: list[str] = []
        boxes: list[Message] = []
        for segment in parse_assistant(event.text):
            if isinstance(segment, TextSegment) and segment.text.strip():
                parts.append(prose(segment.text))
            elif isinstance(segment, AnswerSegment):
                parts.append(f"**answer:** {prose(segment.text)}")
            elif isinstance(segment, CodeSegment) and not segment.complete:  # complete code: its CodeCall
                title = f"step {event.step} · code (no </code>: not run)"
                boxes.append(_titled(title, fenced(segment.code, "python")))
            elif isinstance(segment, SandboxOutputSegment):
                title = f"step {event.step} · sandbox output the model wrote itself (not run)"
                boxes.append(_titled(title, fenced(segment.text, "text")))
        log = f"{event.completion_tokens} tokens · {event.duration_s:.1f} s · {event.finish_reason}"
        text = "\n\n".join(parts) or "*(no text)*"
        self.messages += [_titled(f"step {event.step} · reasoning", text, log), *boxes]
        self.status = f"step {event.step} done"

    def _observation(self, event: Observation) -> None:
        """The sandbox's output as one box, then each image it produced right below it."""
        parts: list[str] = []
        if event.stdout.strip():
            parts.append(fenced(event.stdout, "text"))
        if event.error:
            parts.append("**error:**\n\n" + fenced(event.error, "text"))
        if event.timed_out:
            parts.append("**timed out**")
        if event.images:
            parts.append(f"{len(event.images)} image{'s' * (len(event.images) != 1)}, below")
        if event.repairs:
            parts.append("repairs: " + ", ".join(event.repairs))
        if event.note:
            parts.append(prose(event.note))
        title = f"step {event.step} · sandbox" + ("" if event.fed_back else " (rolled back)")
        state = "ok" if event.ok else "timed out" if event.timed_out else "error"
        body = "\n\n".join(parts) or "*(no output)*"
        self.messages.append(_titled(title, body, f"{state} · {event.duration_s:.2f} s"))
        for number, path in enumerate(event.images, 1):
            self.messages.append({"role": "assistant", "content": {"path": str(path)}})
            self.images.append((str(path), f"step {event.step}, image {number}"))
        self.status = f"step {event.step}: the sandbox answered; the model goes on"

    def _final(self, event: Final) -> None:
        self.live = ""
        self.done = True
        self.answer = event.answer
        steps = f"{event.steps} step{'s' * (event.steps != 1)}, {event.tool_calls} tool call"
        steps += "s" * (event.tool_calls != 1)
        if event.answer is not None:
            self.messages.append({"role": "assistant", "content": f"**Answer: {prose(event.answer)}**"})
            self.status = (
                f"answered ({steps})" if event.reason == "answer" else f"answered ({steps}; {event.reason})"
            )
        else:
            self.messages.append({"role": "assistant", "content": f"*No answer ({event.reason}).*"})
            self.status = f"ended without an answer: {event.reason} ({steps})"
