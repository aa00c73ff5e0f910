"""The model factory is a leaf: `thyme.models` builds tokenizers, processors and tiny models without the agent
loop, so the loop (whose backends import the factory) never sits below it. Checked in fresh interpreters,
where `sys.modules` shows everything an import pulled in."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import thyme.models

# The encoder turns the agent's conversations into token ids for generation and training: it is the one
# module here that consumes agent types (`Conversation`); the factory's builders do not import it.
CONSUMERS = {"thyme.models.encoding"}


def test_the_model_factory_does_not_import_the_agent_loop():
    modules = ["thyme.models"] + [
        f"thyme.models.{m.name}" for m in pkgutil.iter_modules(thyme.models.__path__) if not m.ispkg
    ]
    modules = [m for m in modules if m not in CONSUMERS]
    assert "thyme.models.tiny" in modules and "thyme.models.tokenizer" in modules
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    upward = sorted(m for m in loaded if m.split(".")[:2] in (["thyme", "agent"], ["thyme", "train"]))
    assert upward == [], f"{modules} pulled in {upward}"
