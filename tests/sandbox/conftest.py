"""A sandbox shared by the tests of one module; tests that need other limits start their own."""

from __future__ import annotations

import pytest

from thyme.sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=3.0, pool_size=2)) as sb:
        yield sb


@pytest.fixture
def session(sandbox, scene_jpeg):
    with sandbox.session(inputs=[scene_jpeg]) as s:
        yield s
