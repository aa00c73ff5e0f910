"""`thyme web`: a Gradio page over the agent loop (the same `Agent.run` the CLI, the server and eval use).

Upload an image or draw a toy-world example, ask, and watch the steps stream: the model's reasoning, the
code it wrote (highlighted), each image the sandbox produced, the answer; tools on or off; the trajectory to
download as JSON or HTML. Any backend: a local model (transformers, vLLM) or an OpenAI-compatible endpoint.

    thyme web                                   # the bundled thyme-tiny on http://127.0.0.1:7860
    thyme web --model Kwai-Keye/Thyme-RL --port 8080
    thyme web --base-url http://gpu-box:8000/v1 --model Thyme-RL

Rooms: `steps` (events -> what the page shows, no Gradio), `run` (one run in a worker thread, its events on
a queue), `app` (the page, `WebServer`, `launch`), `command` (`thyme web`'s flags). Needs the `web` extra
(`pip install 'thyme-vl[web]'`): importing `thyme.web.app` imports Gradio, this package does not.
"""

from thyme.web.steps import StepView

__all__ = ["StepView", "WebServer", "build_app", "launch"]


def __getattr__(name: str):
    """`build_app`, `launch` and `WebServer` import Gradio, so they load on first use."""
    if name in ("WebServer", "build_app", "launch"):
        from thyme.web import app

        return getattr(app, name)
    raise AttributeError(f"module 'thyme.web' has no attribute {name!r}")
