"""The `thyme` command line: thin wrappers over the Python API, with rich output for people.

Commands grow with the project; each one only parses flags, calls the library, and renders the result.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

import thyme
from thyme.data.cli import data_app
from thyme.train.cli import train_app

app = typer.Typer(
    help="thyme-vl: vision-language models that think beyond images (code-writing reasoning + sandbox).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits both (HELP_OPTIONS)
)
sandbox_app = typer.Typer(help="Inspect and use the code sandbox.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
models_app = typer.Typer(help="Build offline models for tests and smoke runs.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
console = Console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"thyme-vl {thyme.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """thyme-vl command line."""


@app.command()
def demo(
    out: pathlib.Path = typer.Option(pathlib.Path("demo_out"), help="Where the image and trajectory go."),
    task: str = typer.Option("zoom", help="zoom (find a tiny label and read it) | compute (multiply)."),
    seed: int = typer.Option(None, help="Toy-world test seed of the image (default: a new one each run)."),
    device: str = typer.Option("cpu", help="auto | cpu | cuda."),
) -> None:
    """Run the bundled thyme-tiny offline on a freshly drawn toy-world image, each step shown live."""
    from thyme.demo import run_demo

    raise typer.Exit(run_demo(out, console, task=task, seed=seed, device=device))


@app.command()
def run(
    question: str = typer.Argument(..., help="The question about the image."),
    model: str = typer.Option(
        ..., "--model", "-m", help="Checkpoint directory, hub id, or served model name."
    ),
    image: pathlib.Path = typer.Option(None, "--image", "-i", help="The image (PNG, JPEG...)."),
    backend: str = typer.Option("transformers", help="transformers | vllm | openai."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (openai backend)."),
    api_key: str = typer.Option(None, "--api-key", envvar="THYME_API_KEY", help="Bearer key for --base-url."),
    as_json: bool = typer.Option(False, "--json", help="Print the trajectory as one JSON object."),
    html: pathlib.Path = typer.Option(None, "--html", help="Write a self-contained HTML view here."),
    save: pathlib.Path = typer.Option(
        None, "--save", help="Save trajectory.json and its images in this dir."
    ),
    max_steps: int = typer.Option(5, "--max-steps", help="Generation rounds at most."),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", help="Tokens per step at most."),
    temperature: float = typer.Option(0.0, help="Text temperature (0 = greedy)."),
    code_temperature: float = typer.Option(None, help="Temperature inside code (ATS: 0). Default: same."),
    seed: int = typer.Option(None, help="Sampling seed."),
    no_tools: bool = typer.Option(False, "--no-tools", help="Direct answer, no code (the baseline)."),
    preset: str = typer.Option(None, help="Prompt preset (released, default...). Default: the model's."),
    on_error: str = typer.Option("feedback", "--on-error", help="feedback | resample."),
    device: str = typer.Option("auto", help="transformers: auto | cpu | cuda."),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Resize images to at most this many pixels."),
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Run code even where a sandbox layer is missing."
    ),
) -> None:
    """Answer a question about an image: the model reasons, writes code, the sandbox runs it, repeat."""
    from thyme.agent.run_command import run_command

    raise typer.Exit(
        run_command(
            console=console,
            err_console=err_console,
            question=question,
            model=model,
            image=image,
            backend=backend,
            base_url=base_url,
            api_key=api_key,
            as_json=as_json,
            html=html,
            save=save,
            max_steps=max_steps,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            code_temperature=code_temperature,
            seed=seed,
            tools=not no_tools,
            preset=preset,
            on_error=on_error,
            device=device,
            max_pixels=max_pixels,
            allow_weak_isolation=allow_weak_isolation,
        )
    )


@app.command()
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint directory or hub id (transformers)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you mean otherwise)."),
    port: int = typer.Option(8000, help="TCP port; 0 picks a free one (the URL is printed)."),
    token_file: pathlib.Path | None = typer.Option(
        None, help="File holding the bearer token clients must send; without it the API is open."
    ),
    served_name: str = typer.Option(None, "--served-model-name", help="Name clients send as `model`."),
    raw: bool = typer.Option(
        False, "--raw", help="Serve plain generation (like `vllm serve`) instead of the whole loop."
    ),
    max_steps: int = typer.Option(5, "--max-steps", help="Loop mode: generation rounds per request."),
    max_batch: int = typer.Option(
        32,
        "--max-batch",
        help="Loop mode: concurrent requests' steps share one batched generation, up to this many "
        "requests per call; 1 runs each step alone.",
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Loop mode: run even when a sandbox layer is missing."
    ),
    sandbox_url: list[str] = typer.Option(
        None,
        "--sandbox-url",
        help="Loop mode: run the code on `thyme sandbox serve` hosts instead of a local sandbox; repeat the "
        "flag or separate URLs by commas (sessions go to the least loaded host that answers).",
    ),
    sandbox_token_file: pathlib.Path | None = typer.Option(
        None, help="File holding the sandbox hosts' bearer token (with --sandbox-url)."
    ),
) -> None:
    """OpenAI-compatible /v1/chat/completions: the whole loop server-side (or, with --raw, generation)."""
    from thyme.agent import AgentConfig, BackendError
    from thyme.agent.backends.base import check_device
    from thyme.asgi import check_port
    from thyme.errors import cli_flags, first_line
    from thyme.sandbox import SandboxConfig, SandboxError
    from thyme.sandbox.server import read_token_file
    from thyme.serve.agent import serve_agent
    from thyme.serve.generation import serve_generation

    def ready(url: str) -> None:
        mode = "generation" if raw else "the agent loop"
        err_console.print(f"serving {mode} for {model}; Ctrl-C stops", soft_wrap=True, highlight=False)
        sys.stdout.write(f"listening on {url}\n")
        sys.stdout.flush()

    try:
        check_port(port, "--port")  # both before the model loads
        check_device(device, "--device")
        token = read_token_file(token_file) if token_file is not None else None
        sandbox_token = read_token_file(sandbox_token_file) if sandbox_token_file is not None else None
        if raw and sandbox_url:
            raise ValueError("--sandbox-url is for the loop; --raw serves generation and runs no code")
        if max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, not {max_batch}")
        if raw:
            serve_generation(
                model, host, port, token=token, model_name=served_name, device=device, on_ready=ready
            )
        else:
            serve_agent(
                model,
                host,
                port,
                token=token,
                model_name=served_name,
                config=AgentConfig(max_steps=max_steps),
                sandbox_config=SandboxConfig(allow_weak_isolation=allow_weak_isolation),
                sandbox_urls=sandbox_url or None,
                sandbox_token=sandbox_token,
                on_ready=ready,
                max_batch=max_batch,
                device=device,
            )
    except (ValueError, BackendError, SandboxError) as exc:
        err_console.print(f"error: {first_line(exc, cli_flags('max_steps'))}", markup=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        err_console.print(f"error: cannot listen on {host}:{port} ({exc.strerror or exc})", markup=False)
        raise typer.Exit(2) from None


@app.command()
def web(
    model: str = typer.Option(
        "thyme-tiny",
        "--model",
        "-m",
        help="Checkpoint directory or hub id, or the served model (--base-url).",
    ),
    backend: str = typer.Option(None, help="transformers | vllm | openai. Default: openai with --base-url."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (openai backend)."),
    api_key: str = typer.Option(None, "--api-key", envvar="THYME_API_KEY", help="Bearer key for --base-url."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you mean otherwise)."),
    port: int = typer.Option(7860, help="TCP port; 0 picks a free one (the URL is printed)."),
    share: str = typer.Option(
        "never", help="never | gradio: also a public *.gradio.live link (needs internet; anyone may use it)."
    ),
    device: str = typer.Option("auto", help="transformers: auto | cpu | cuda."),
    max_steps: int = typer.Option(5, "--max-steps", help="Generation rounds per question."),
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Run code even where a sandbox layer is missing."
    ),
) -> None:
    """A web page over the agent loop: upload an image (or draw a toy-world one), ask, and watch the
    reasoning, the code, the images the sandbox made and the answer arrive; download the trajectory.

    Serves http://HOST:PORT until Ctrl-C or SIGTERM. The model: the bundled thyme-tiny by default, a local
    checkpoint (--model DIR), or an OpenAI-compatible endpoint (--base-url URL --model NAME).
    """
    from thyme.web.command import web_command

    raise typer.Exit(
        web_command(
            console=console,
            err_console=err_console,
            model=model,
            backend=backend,
            base_url=base_url,
            api_key=api_key,
            host=host,
            port=port,
            share=share,
            device=device,
            max_steps=max_steps,
            allow_weak_isolation=allow_weak_isolation,
        )
    )


@app.command("eval")
def eval_(
    task: str = typer.Option(
        ..., "--task", "-t", help="Task name (vstar, hrbench4k, pope, toyworld_zoom...)."
    ),
    model: str = typer.Option(
        ..., "--model", "-m", help="Checkpoint directory, hub id, or served model name."
    ),
    out: pathlib.Path = typer.Option(..., "--out", "-o", help="Run directory (resumed when it exists)."),
    data: pathlib.Path = typer.Option(
        None, "--data", help="The benchmark file/dir (TSV, parquet, toy world)."
    ),
    limit: int = typer.Option(None, "--limit", help="Only the first N samples."),
    no_tools: bool = typer.Option(False, "--no-tools", help="Direct answers only (the baseline)."),
    both: bool = typer.Option(False, "--both", help="Run with tools and without, side by side."),
    backend: str = typer.Option("transformers", help="transformers | vllm | openai."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (openai backend)."),
    api_key: str = typer.Option(None, "--api-key", envvar="THYME_API_KEY", help="Bearer key for --base-url."),
    concurrency: int = typer.Option(8, help="Trajectories in flight (batch size for local backends)."),
    max_steps: int = typer.Option(5, "--max-steps", help="Generation rounds per trajectory."),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", help="Tokens per step."),
    temperature: float = typer.Option(0.0, help="Text temperature (0 = greedy)."),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Resize images to at most this many pixels."),
    preset: str = typer.Option(None, help="Prompt preset; default: the model's."),
    judge_url: str = typer.Option(None, "--judge-url", help="OpenAI-compatible endpoint of an LLM judge."),
    judge_model: str = typer.Option(None, "--judge-model", help="The judge's model name."),
    judge_api_key: str = typer.Option(
        None, "--judge-api-key", envvar="THYME_JUDGE_API_KEY", help="Judge key."
    ),
    device: str = typer.Option("auto", help="transformers: auto | cpu | cuda."),
    force: bool = typer.Option(False, "--force", help="Resume even though the protocol changed."),
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Run code even where a sandbox layer is missing."
    ),
    mcq_matching: str = typer.Option(
        None, "--mcq-matching", help="MCQ answers: vlmevalkit (default) | lenient (recorded in the card)."
    ),
) -> None:
    """Evaluate a model on a benchmark: resumable, many trajectories in flight, a report with the protocol."""
    from thyme.eval.eval_command import eval_command

    raise typer.Exit(
        eval_command(
            task,
            model,
            data=data,
            out=out,
            limit=limit,
            tools=not no_tools,
            backend=backend,
            base_url=base_url,
            api_key=api_key,
            concurrency=concurrency,
            max_steps=max_steps,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            max_pixels=max_pixels,
            judge_url=judge_url,
            judge_model=judge_model,
            force=force,
            both=both,
            console=console,
            err_console=err_console,
            preset=preset,
            device=device,
            allow_weak_isolation=allow_weak_isolation,
            judge_api_key=judge_api_key,
            mcq_matching=mcq_matching,
        )
    )


@app.command()
def synth(
    task: str = typer.Option(..., "--task", help="zoom | compute | rotate | contrast."),
    n: int = typer.Option(..., "--n", help="Number of samples."),
    seed: int = typer.Option(0, help="First seed; the same seed gives byte-identical files."),
    out: pathlib.Path = typer.Option(..., "--out", help="Directory to write (samples.jsonl, images/)."),
    split: str = typer.Option("train", help="train | test: disjoint seed ranges."),
    level: str = typer.Option(None, help="One difficulty level (default: cycle through all)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty directory."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Run every gold trajectory in the sandbox."
    ),
) -> None:
    """Generate toy-world data: DIR/samples.jsonl, DIR/images/, DIR/manifest.json."""
    from thyme.data.synth import synth_command

    raise typer.Exit(
        synth_command(
            task,
            n,
            seed,
            out,
            split=split,
            level=level,
            overwrite=overwrite,
            verify=verify,
            console=err_console,
        )
    )


# The SandboxConfig fields `thyme sandbox` commands set from flags: their errors name the flag.
SANDBOX_FLAGS = {"filesystem": "--filesystem", "timeout_s": "--timeout"}
# The ServerConfig fields `thyme sandbox serve` sets from flags.
SERVER_FLAGS = {
    "port": "--port",
    "max_request_bytes": "--max-request-mb",
    "idle_ttl_s": "--idle-ttl",
    "max_sessions": "--max-sessions",
}
# One definition of the sandbox's filesystem choice for every `thyme sandbox` command.
FILESYSTEM_OPTION = typer.Option(
    "auto",
    "--filesystem",
    help="What confines the files code sees: landlock, view (a root parent's mount-namespace view, "
    "Landlock's stand-in on kernels without it), or auto (Landlock where the kernel has it).",
)


@sandbox_app.command("check")
def sandbox_check(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Do not fail when a required confinement layer is missing."
    ),
    filesystem: str = FILESYSTEM_OPTION,
) -> None:
    """Print the confinement layers active on this machine and run a confinement self-test."""
    from thyme.errors import first_line
    from thyme.sandbox.selftest import run_selftest

    try:
        report = run_selftest(allow_weak_isolation=allow_weak_isolation, filesystem=filesystem)
    except ValueError as exc:
        err_console.print(f"error: {first_line(exc, SANDBOX_FLAGS)}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        console.print_json(json.dumps(report))
    else:
        table = Table(title="sandbox layers")
        for col in ("layer", "state", "detail"):
            table.add_column(col)
        for layer in report["layers"]:
            state = (
                "[green]active[/]"
                if layer["active"]
                else ("[red]MISSING[/]" if layer["required"] else "[yellow]missing[/]")
            )
            table.add_row(layer["name"], state, layer["detail"])
        console.print(table)
        for check in report["checks"]:
            mark = "[green]ok[/]" if check["passed"] else "[red]FAILED[/]"
            console.print(f"{mark} {check['name']}: {check['detail']}")
    if not all(check["passed"] for check in report["checks"]):
        raise typer.Exit(1)


@sandbox_app.command("exec")
def sandbox_exec(
    files: list[pathlib.Path] = typer.Argument(..., help="Python files, run in order in one session."),
    image: list[pathlib.Path] = typer.Option(
        [], "--image", "-i", help="Input image(s); the first is image_path."
    ),
    timeout: float = typer.Option(30.0, help="Wall-clock limit per file, seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file."),
    out: pathlib.Path | None = typer.Option(
        None, help="Copy the images each file produced into this directory."
    ),
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Run even when a required confinement layer is missing."
    ),
    filesystem: str = FILESYSTEM_OPTION,
) -> None:
    """Run Python files in one sandbox session (variables persist from file to file)."""
    import shutil

    from thyme.errors import first_line
    from thyme.files import check_out_dir
    from thyme.sandbox import Sandbox, SandboxConfig, SandboxError
    from thyme.terminal import printable

    def fail(message: str) -> NoReturn:
        err_console.print(f"error: {message}", markup=False)
        raise typer.Exit(2)

    for path in [*files, *image]:
        if not path.is_file():
            fail(f"{path} is not a file; pass existing paths")
    sources = []
    for path in files:
        try:
            sources.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            fail(f"{path} is not UTF-8 text; pass Python source files (images go with --image)")
    try:
        if out is not None:
            check_out_dir(out)
    except ValueError as exc:
        fail(str(exc))
    failed = False
    try:
        config = SandboxConfig(
            timeout_s=timeout, pool_size=0, allow_weak_isolation=allow_weak_isolation, filesystem=filesystem
        )
        sandbox = Sandbox(config)
    except (ValueError, SandboxError) as exc:
        fail(first_line(exc, SANDBOX_FLAGS))
    with sandbox, sandbox.session(inputs=image) as s:
        for path, source in zip(files, sources, strict=True):
            result = s.run(source)
            failed |= not result.ok
            # The session's files go when the command ends: name only what remains (copies under --out).
            images = [p.name for p in result.images]
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                images = [str(shutil.copy(p, out / f"{path.stem}-{p.name}")) for p in result.images]
            if as_json:
                sys.stdout.write(
                    json.dumps(
                        {
                            "file": str(path),
                            "stdout": result.stdout,
                            "error": result.error,
                            "timed_out": result.timed_out,
                            "images": images,
                            "repairs": result.repairs,
                            "duration_s": result.duration_s,
                        }
                    )
                    + "\n"
                )
            else:
                console.rule(str(path))
                if result.stdout:
                    console.print(printable(result.stdout), end="", markup=False, highlight=False)
                if result.error:
                    err_console.print(printable(result.error), markup=False, highlight=False)
                kept = " (not kept: pass --out DIR to keep them)" if out is None and images else ""
                console.print(
                    f"{result.duration_s * 1000:.1f} ms; images: {', '.join(images) or 'none'}{kept}; "
                    f"repairs: {', '.join(result.repairs) or 'none'}",
                    style="dim",
                    markup=False,
                    highlight=False,
                )
    raise typer.Exit(1 if failed else 0)


@sandbox_app.command("serve")
def sandbox_serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you mean otherwise)."),
    port: int = typer.Option(8765, help="TCP port; 0 picks a free one (the URL is printed)."),
    token_file: pathlib.Path | None = typer.Option(
        None, help="File holding the bearer token clients must send; without it the API is open."
    ),
    max_request_mb: float = typer.Option(64.0, help="Largest request body in MiB (uploads); larger -> 413."),
    timeout: float = typer.Option(30.0, help="Wall-clock limit per run call, seconds."),
    idle_ttl: float = typer.Option(600.0, help="Close sessions idle for this many seconds."),
    max_sessions: int = typer.Option(1024, help="Open sessions (forks included) held at once."),
    allow_weak_isolation: bool = typer.Option(
        False, "--allow-weak-isolation", help="Run even when a required confinement layer is missing."
    ),
    filesystem: str = FILESYSTEM_OPTION,
) -> None:
    """Serve sandbox sessions over HTTP (create, run, fork, close; /docs) until Ctrl-C or SIGTERM, which let
    the runs in flight finish first."""
    import contextlib
    import ipaddress

    from thyme.asgi import check_port
    from thyme.errors import first_line
    from thyme.sandbox import Sandbox, SandboxConfig, SandboxError
    from thyme.sandbox.server import SandboxServer, ServerConfig, read_token_file, serve_until_signal

    try:
        check_port(port, "--port")
        token = read_token_file(token_file) if token_file is not None else None
        server_config = ServerConfig(
            host=host,
            port=port,
            token=token,
            max_request_bytes=int(max_request_mb * (1 << 20)),
            idle_ttl_s=idle_ttl,
            max_sessions=max_sessions,
        )
        sandbox = Sandbox(
            SandboxConfig(timeout_s=timeout, allow_weak_isolation=allow_weak_isolation, filesystem=filesystem)
        )
    except (ValueError, SandboxError) as exc:
        flags = {**SANDBOX_FLAGS, **SERVER_FLAGS}
        err_console.print(f"error: {first_line(exc, flags)}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    with sandbox:
        try:
            server = SandboxServer(sandbox, server_config)
        except OSError as exc:
            err_console.print(
                f"error: cannot listen on {host}:{port} ({exc.strerror or exc})", soft_wrap=True
            )
            raise typer.Exit(2) from None
        with contextlib.suppress(ValueError):
            if token is None and not ipaddress.ip_address(host).is_loopback:
                err_console.print(f"warning: {host} is reachable from other hosts and no --token-file is set")

        def ready(url: str) -> None:
            auth = "bearer token" if token else "none"
            err_console.print(
                f"isolation: {', '.join(sandbox.isolation)}; auth: {auth}; Ctrl-C stops",
                soft_wrap=True,
                highlight=False,
            )
            sys.stdout.write(f"listening on {url}\n")
            sys.stdout.flush()

        serve_until_signal(server, ready)


@models_app.command("tiny")
def models_tiny(
    out: pathlib.Path = typer.Option(..., "--out", help="Directory to write; must be absent or empty."),
    seed: int = typer.Option(0, help="Weight seed; the same seed gives byte-identical files."),
    size: str = typer.Option("tiny", help="tiny (~1M parameters, tests) or small (~6M, toy world)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty directory."),
) -> None:
    """Build a random Qwen2.5-VL with thyme's offline tokenizer and processor; nothing is downloaded."""
    try:
        from thyme.models import build_tiny
    except ImportError as exc:
        err_console.print(
            f"error: {exc.name or exc} is not installed; install the models extra: "
            "pip install 'thyme-vl[models]' torch",
            markup=False,
        )
        raise typer.Exit(2) from None
    from thyme.errors import first_line
    from thyme.files import check_out_dir

    try:
        check_out_dir(out)
        with console.status(f"building the {size} model in {out}"):
            path = build_tiny(out, seed=seed, size=size, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        err_console.print(f"error: {first_line(exc)}", markup=False)
        raise typer.Exit(2) from None
    mib = sum(p.stat().st_size for p in path.iterdir()) / 2**20
    console.print(f"wrote {path} ({mib:.1f} MiB)")


HELP_OPTIONS = ["-h", "--help"]


def command() -> typer.core.TyperGroup:
    """The `thyme` command as `main` runs it. On/off flags take no value, so their help shows no value type
    (typer labels them `<bool>`, which invites `--json true`, an error)."""
    root = typer.main.get_command(app)
    todo = [root]
    while todo:
        cmd = todo.pop()
        todo.extend(getattr(cmd, "commands", {}).values())
        help_option = cmd.get_help_option(typer.Context(cmd, help_option_names=HELP_OPTIONS))  # cached
        for param in [*cmd.params, help_option]:
            if isinstance(param, typer.core.TyperOption) and param.is_flag:
                param.metavar = ""
    return root


def main() -> None:
    from thyme.interrupts import sigterm_interrupts

    # SIGTERM stops every command like Ctrl-C, so the temporary folders it made are removed.
    with sigterm_interrupts():
        command()()
