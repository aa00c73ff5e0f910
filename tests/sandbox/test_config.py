"""`SandboxConfig` validates its fields with messages that say how to fix them."""

from __future__ import annotations

import dataclasses

import pytest

from thyme.sandbox import SandboxConfig


def test_defaults_keep_the_contract_fields():
    cfg = SandboxConfig(timeout_s=5, memory_mb=1024)
    assert cfg.timeout_s == 5 and cfg.memory_mb == 1024


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SandboxConfig().timeout_s = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s must be > 0"),
        ({"memory_mb": 10}, "use >= 256"),
        ({"pool_size": -1}, "pool_size must be >= 0"),
        ({"max_images_per_call": 0}, "max_images_per_call"),
        ({"max_aspect_ratio": 0.5}, "max_aspect_ratio"),
        ({"repairs": ("indent", "nonsense")}, "valid names"),
        ({"output_mb": 0}, r"output quota needs >= 1 \(MiB per session\)"),
        ({"output_files": 2}, "use >= 8"),
        ({"png_compress_level": 10}, "zlib level 0-9"),
        ({"png_compress_level": -1}, "or None for PIL's default"),
    ],
)
def test_invalid_values_say_how_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SandboxConfig(**kwargs)


def test_unknown_field_is_an_error():
    with pytest.raises(TypeError):
        SandboxConfig(timout_s=3)  # type: ignore[call-arg]


def test_repairs_can_be_switched_off(scene_jpeg):
    from thyme.sandbox import Sandbox

    code = "processed_path = '/mnt/data/temp_processed_images/x.png'\nprint(processed_path)"
    with Sandbox(SandboxConfig(repairs=(), pool_size=0)) as sb, sb.session(inputs=[scene_jpeg]) as s:
        result = s.run(code)
        assert result.repairs == []
        assert result.stdout.strip() == "/mnt/data/temp_processed_images/x.png"


PNG_CODE = """\
import io
from PIL import Image
img = Image.open(image_path).convert('RGB').crop((0, 0, 96, 64))
def saved(**options):
    buffer = io.BytesIO()
    img.save(buffer, format='PNG', **options)
    return buffer.getvalue()
img.save('default.png')
same = open('default.png', 'rb').read() == saved(compress_level=LEVEL)
print(same, saved(compress_level=9) != saved(compress_level=1))
"""


@pytest.mark.parametrize(("level", "expected"), [(None, 6), (1, 1), (9, 9)])
def test_png_saves_without_a_level_use_the_configured_one(scene_jpeg, level, expected):
    """Model code's `img.save('x.png')` encodes at `png_compress_level`; an explicit level still wins."""
    from thyme.sandbox import Sandbox

    with (
        Sandbox(SandboxConfig(pool_size=0, png_compress_level=level)) as sb,
        sb.session(inputs=[scene_jpeg]) as s,
    ):
        result = s.run(PNG_CODE.replace("LEVEL", str(expected)))
    assert result.ok, result.error
    assert result.stdout.split() == ["True", "True"]
    assert len(result.images) == 1


def test_the_default_png_level_is_fast():
    assert SandboxConfig().png_compress_level == 1
