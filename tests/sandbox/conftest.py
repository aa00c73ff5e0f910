"""A sandbox shared by the tests of one module, once per filesystem confinement (Landlock, and the
filesystem view for root parents); tests that need other limits start their own."""

from __future__ import annotations

import pytest
from filesystems import FILESYSTEMS

from thyme.sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="module", params=FILESYSTEMS)
def sandbox(request):
    with Sandbox(SandboxConfig(timeout_s=3.0, pool_size=2, filesystem=request.param)) as sb:
        yield sb


@pytest.fixture
def session(sandbox, scene_jpeg):
    with sandbox.session(inputs=[scene_jpeg]) as s:
        yield s
