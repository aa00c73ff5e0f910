"""A short soak: hundreds of mixed sessions leave no process, descriptor, mount, cgroup or file behind."""

from __future__ import annotations

import pytest

from thyme.sandbox.soak import soak


@pytest.mark.slow
def test_no_leaks_after_many_sessions(small_png):
    report = soak(small_png, 300)
    assert report.clean, report
