"""The sandbox: runs model-written Python out of process, one warm worker per episode.

Public contract (DESIGN.md): `Sandbox`, `SandboxConfig`, `ExecutionResult`; `sandbox.session(inputs=[...])`
gives a `Session` with `run`, `arun`, `fork` and `close`.
"""

from thyme.sandbox.config import SandboxConfig
from thyme.sandbox.core import Sandbox
from thyme.sandbox.layers import Layer
from thyme.sandbox.process import SandboxError
from thyme.sandbox.result import ExecutionResult
from thyme.sandbox.session import Session, SessionBusy

__all__ = ["ExecutionResult", "Layer", "Sandbox", "SandboxConfig", "SandboxError", "Session", "SessionBusy"]
