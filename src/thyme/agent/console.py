"""Live rendering of agent events for people (`thyme run`, `thyme demo`), with rich.

The loop yields typed events; this module only turns each one into something readable as it arrives:
the model's reasoning, the code it wrote (highlighted), what the sandbox returned, and the answer.

What the model or its code wrote is untrusted: control characters (an escape sequence that clears the
screen or retitles the terminal) are shown escaped (`printable`), never sent to the terminal. Code is shown
with its lines as written (the terminal wraps a long line; no re-wrapping at the console's width), and
images by their size: the files the loop made live in a temporary folder that goes when the run ends
(`thyme run --save`/`--html` keep them).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from thyme.agent.events import CodeCall, Error, Event, Final, ModelText, Observation, Resample
from thyme.protocol import CODE_OPEN
from thyme.terminal import printable


class EventPrinter:
    """Callable `(index, event) -> None` that prints each event to `console`."""

    def __init__(self, console: Console, *, show_text: bool = True) -> None:
        self.console = console
        self.show_text = show_text

    def __call__(self, index: int, event: Event) -> None:
        c = self.console
        if isinstance(event, ModelText):
            if self.show_text:
                body = event.text.split(CODE_OPEN, 1)[0] if event.stop == "</code>" else event.text
                c.print(Text(printable(body.strip()) or "(no text)", style="dim"))
            c.print(
                f"[cyan]step {event.step}[/] {event.finish_reason}"
                + (f" at {event.stop}" if event.stop else "")
                + f" · {event.completion_tokens} tokens · {event.duration_s * 1000:.0f} ms",
                highlight=False,
            )
        elif isinstance(event, CodeCall):
            c.rule(f"code (step {event.step})", align="left", style="dim")
            source = printable(event.code)
            # Highlighted text as is: a Syntax renderable would crop or re-wrap at the console's width.
            c.print(Syntax(source, "python").highlight(source), soft_wrap=True)
        elif isinstance(event, Observation):
            lines = []
            if event.stdout.strip():
                lines.append(_escape(event.stdout.strip()))
            if event.error:
                lines.append(f"[red]{_escape(event.error.strip())}[/]")
            lines += [f"image: {_size(p)}" for p in event.images]
            if event.repairs:
                lines.append(f"repairs: {', '.join(event.repairs)}")
            if event.note:
                lines.append(event.note)
            title = (
                "sandbox"
                + ("" if event.fed_back else " (rolled back)")
                + f" · {event.duration_s * 1000:.0f} ms"
            )
            c.print(
                Panel(
                    "\n".join(lines) or "(no output)",
                    title=title,
                    border_style="green" if event.ok else "red",
                )
            )
        elif isinstance(event, Resample):
            c.print(
                f"[yellow]resampling step {event.step} (attempt {event.attempt}): {_escape(event.reason)}[/]"
            )
        elif isinstance(event, Error):
            c.print(f"[red]{event.category} error: {_escape(event.message)}[/]")
        elif isinstance(event, Final):
            answer = _escape(event.answer) if event.answer is not None else "[italic]no answer[/]"
            c.print(f"[bold green]answer:[/] {answer}  [dim]({event.reason}, {event.steps} steps)[/]")


def _escape(text: str) -> str:
    """Model text for a rich markup string: control characters escaped, markup brackets too."""
    from rich.markup import escape

    return escape(printable(text))


def _size(path: Path) -> str:
    """An image's size in pixels, read from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return f"{im.width}x{im.height} px"
    except OSError:
        return "unreadable"
