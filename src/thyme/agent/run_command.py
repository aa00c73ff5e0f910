"""`thyme run`: one question about one image, rendered live; the trajectory as JSON, HTML or a saved folder.

Kept out of `cli.py` so the CLI stays a list of flags. Contract with the user: every failure they can cause
(no --image; a missing, corrupt, truncated, oversized or too elongated image; a device torch cannot use;
unknown model, unreachable endpoint, refused key, bad flag values) is one line on stderr and a non-zero exit
status, checked before the model loads where it can be, and no output file is written unless the run
succeeded (files are written atomically, after the run).

Exit status: 0 answered (or ended without an answer, which is a result), 1 the run failed (backend or
sandbox error), 2 bad input or options.
"""

from __future__ import annotations

import contextlib
import json
import pathlib

from rich.console import Console

from thyme.errors import cli_flags, first_line

# The config fields `thyme run` sets from flags: their errors name the flag.
FLAGS = cli_flags("preset", "max_steps", "on_error", "temperature", "code_temperature", "max_new_tokens")


def run_command(
    *,
    console: Console,
    err_console: Console,
    question: str,
    model: str,
    image: pathlib.Path | None,
    backend: str,
    base_url: str | None,
    api_key: str | None,
    as_json: bool,
    html: pathlib.Path | None,
    save: pathlib.Path | None,
    max_steps: int,
    max_new_tokens: int,
    temperature: float,
    code_temperature: float | None,
    seed: int | None,
    tools: bool,
    preset: str | None,
    on_error: str,
    device: str,
    max_pixels: int | None,
    allow_weak_isolation: bool,
) -> int:
    from thyme.agent import Agent, AgentConfig, BackendError, InputError, SamplingParams
    from thyme.agent.backends.base import backend_options
    from thyme.agent.console import EventPrinter
    from thyme.agent.loop import check_image

    def fail(message: str, status: int) -> int:
        err_console.print(f"error: {message}", markup=False)
        return status

    if image is None:  # the prompts describe the image: a text-only question has no prompt to go in
        return fail("thyme run needs --image PATH: it answers a question about an image", 2)
    try:
        check_image(image)  # fail on a bad image before loading a model
        config = AgentConfig(
            preset=preset,
            max_steps=max_steps,
            on_error=on_error,
            sampling=SamplingParams(
                temperature=temperature,
                code_temperature=code_temperature,
                max_new_tokens=max_new_tokens,
                seed=seed,
            ),
        )
        from thyme.sandbox import SandboxConfig

        sandbox_config = SandboxConfig(allow_weak_isolation=allow_weak_isolation)
    except (InputError, ValueError) as exc:
        return fail(first_line(exc, FLAGS), 2)
    try:
        options = backend_options(
            backend, base_url=base_url, api_key=api_key, device=device, max_pixels=max_pixels
        )
    except ValueError as exc:
        return fail(str(exc), 2)
    try:
        with console.status(f"loading {model} ({backend})") if not as_json else contextlib.nullcontext():
            agent = Agent.from_pretrained(
                model, backend=backend, config=config, sandbox_config=sandbox_config, **options
            )
    except (BackendError, ValueError) as exc:
        return fail(first_line(exc), 2)
    printer = None if as_json else EventPrinter(console)
    with agent:
        if backend == "openai":
            try:
                agent.backend.check()  # an unreachable endpoint or unknown model: one line, before any work
            except BackendError as exc:
                return fail(str(exc).splitlines()[0], 2)
        try:
            traj = agent.run(image=image, question=question, tools=tools, on_event=printer)
        except InputError as exc:
            return fail(str(exc), 2)
        except Exception as exc:  # the sandbox could not start: say which layer, as its error does
            return fail(first_line(exc), 1)
        if traj.final is not None and traj.final.reason == "error":
            return fail(traj.error or "the run failed", 1)
        overflow = next((e for e in traj.events if getattr(e, "finish_reason", None) == "context"), None)
        if overflow is not None and traj.answer is None:
            limit = getattr(agent.backend, "context_length", None)  # local backends know it, endpoints not
            context = f"{limit}-token context" if limit else "context"
            return fail(
                f"the prompt ({overflow.prompt_tokens} tokens) does not fit the model's {context}; shorten "
                "the question, lower --max-pixels, or use a model with a longer context",
                1,
            )
        # Files are written while the agent (and the images it holds) is still open.
        if save is not None:
            path = traj.save(save)
            if not as_json:
                console.print(f"saved {path}")
        if html is not None:
            traj.to_html(html)
            if not as_json:
                console.print(f"wrote {html}")
        if as_json:
            print(json.dumps(traj.to_dict(), ensure_ascii=False))
    return 0
