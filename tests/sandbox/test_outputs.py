"""Output discovery and the collector: which images come back, in which order, and what is refused."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from PIL import Image

from thyme.sandbox import Sandbox, SandboxConfig

SAVE = "from PIL import Image\nimg = Image.open(image_path)\n"


def test_processed_path_is_collected(session):
    result = session.run(
        SAVE + "processed_path = output_dir + '/crop.png'\nimg.crop((0, 0, 300, 200)).save(processed_path)"
    )
    assert result.ok and len(result.images) == 1
    assert Image.open(result.images[0]).size == (300, 200)
    assert not str(result.images[0]).startswith(str(session.output_dir))  # a copy the caller owns


def test_printed_path_is_collected(session):
    result = session.run(
        SAVE + "p = output_dir + '/printed.jpg'\nimg.crop((0, 0, 120, 90)).save(p)\nprint(p)"
    )
    assert [Image.open(p).size for p in result.images] == [(120, 90)]


def test_relative_save_lands_in_the_output_directory(session):
    result = session.run(SAVE + "img.crop((0, 0, 64, 64)).save('rel.png')\nprint('rel.png')")
    assert len(result.images) == 1


def test_unannounced_new_files_are_collected(session):
    result = session.run(SAVE + "img.crop((0, 0, 70, 70)).save(output_dir + '/quiet.png')")
    assert [Image.open(p).size for p in result.images] == [(70, 70)]


def test_order_processed_then_printed_then_others(session):
    code = SAVE + (
        "img.crop((0, 0, 81, 81)).save(output_dir + '/a_other.png')\n"
        "img.crop((0, 0, 82, 82)).save(output_dir + '/b_printed.png')\n"
        "img.crop((0, 0, 83, 83)).save(output_dir + '/c_processed.png')\n"
        "processed_path = output_dir + '/c_processed.png'\n"
        "print(output_dir + '/b_printed.png')\n"
    )
    sizes = [Image.open(p).size[0] for p in session.run(code).images]
    assert sizes == [83, 82, 81]


def test_images_are_not_collected_twice(session):
    first = session.run(
        SAVE + "processed_path = output_dir + '/once.png'\nimg.crop((0, 0, 90, 90)).save(processed_path)"
    )
    assert len(first.images) == 1
    assert session.run("x = 1").images == []  # a stale processed_path is not reported again
    again = session.run("img.crop((0, 0, 91, 91)).save(processed_path)")  # rewritten file: new content
    assert [Image.open(p).size for p in again.images] == [(91, 91)]


def test_collected_images_cannot_be_changed_by_later_code(session):
    result = session.run(
        SAVE + "processed_path = output_dir + '/x.png'\nimg.crop((0, 0, 50, 50)).save(processed_path)"
    )
    before = result.images[0].read_bytes()
    session.run("open(processed_path, 'wb').write(b'garbage')")
    assert result.images[0].read_bytes() == before


def test_sandbox_prefix_of_the_released_model_works(session):
    code = SAVE + (
        "import os\nos.makedirs('/mnt/data/temp_processed_images/', exist_ok=True)\n"
        "processed_path = '/mnt/data/temp_processed_images/scene_1234.png'\n"
        "img.crop((100, 100, 400, 300)).save(processed_path)\nprint(processed_path)"
    )
    result = session.run(code)
    assert result.ok, result.error
    assert [Image.open(p).size for p in result.images] == [(300, 200)]
    assert "output_prefix" in result.repairs
    assert not os.path.exists("/mnt/data/temp_processed_images/scene_1234.png")


def test_non_images_and_outside_paths_are_ignored(session):
    result = session.run("open('notes.txt', 'w').write('hi')\nprint('/etc/hostname.png')\nprint(image_path)")
    assert result.ok and result.images == []


def test_missing_processed_path_is_reported(session):
    result = session.run("processed_path = output_dir + '/never_written.png'")
    assert result.images == []
    assert "does not exist" in result.error


def test_symlinks_are_refused(session):
    code = "import os\nos.symlink(image_path, 'link.png')\nprocessed_path = output_dir + '/link.png'"
    result = session.run(code)
    assert result.images == []


def test_symlinked_directory_is_refused(session, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (80, 80)).save(outside / "secret.png")
    result = session.run(f"import os\nos.symlink({str(outside)!r}, 'sub')\nprint('sub/secret.png')")
    assert result.images == []


def test_hard_links_are_refused(session, tmp_path):
    outside = tmp_path / "victim.png"
    Image.new("RGB", (80, 80)).save(outside)
    result = session.run(
        f"import os\nos.link({str(outside)!r}, 'hard.png')\nprocessed_path = output_dir + '/hard.png'"
    )
    assert result.images == []
    # Landlock refuses to link a file from outside into the output tree; without it the collector refuses.
    assert "[Errno" in (result.error or "") or any("hard link" in r for r in result.rejected)


def test_collector_refuses_hard_links_and_symlinks_itself(tmp_path):
    from thyme.sandbox import SandboxConfig
    from thyme.sandbox.collector import Collector

    out, dest = tmp_path / "out", tmp_path / "dest"
    out.mkdir()
    dest.mkdir()
    victim = tmp_path / "victim.png"
    Image.new("RGB", (80, 80)).save(victim)
    os.link(victim, out / "hard.png")
    os.symlink(victim, out / "soft.png")
    collected = Collector(out, dest, SandboxConfig()).collect(1, [str(out / "hard.png"), "soft.png"], "")
    assert collected.images == []
    assert any("hard link" in r for r in collected.rejected)
    assert list(dest.iterdir()) == []


def test_extreme_aspect_ratio_is_refused_with_an_error(session):
    result = session.run(
        SAVE + "processed_path = output_dir + '/strip.png'\nImage.new('RGB', (1000, 4)).save(processed_path)"
    )
    assert result.images == []
    assert "aspect ratio" in result.error


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_unread(session):
    bomb = _png_header_only(100_000, 100_000)
    result = session.run(f"open(output_dir + '/bomb.png', 'wb').write({bomb!r})")
    assert result.images == []
    assert any("pixel cap" in r for r in result.rejected)


def test_corrupt_image_is_refused(session):
    result = session.run("open(output_dir + '/broken.png', 'wb').write(b'\\x89PNG not really')")
    assert result.images == [] and any("not a readable image" in r for r in result.rejected)


def test_images_per_call_are_capped(scene_jpeg):
    with (
        Sandbox(SandboxConfig(max_images_per_call=3, pool_size=0)) as sb,
        sb.session(inputs=[scene_jpeg]) as s,
    ):
        result = s.run(
            SAVE + "for i in range(6):\n    img.crop((0, 0, 64 + i, 64)).save(f'{output_dir}/m{i}.png')"
        )
        assert len(result.images) == 3
        assert any("more than 3 images" in r for r in result.rejected)


def test_oversized_file_is_refused(scene_jpeg):
    with (
        Sandbox(SandboxConfig(max_image_bytes=10_000, pool_size=0)) as sb,
        sb.session(inputs=[scene_jpeg]) as s,
    ):
        result = s.run(SAVE + "processed_path = output_dir + '/big.png'\nimg.save(processed_path)")
        assert result.images == [] and any("byte cap" in r for r in result.rejected)


@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp", "webp"])
def test_common_formats(session, fmt):
    result = session.run(
        SAVE
        + f"processed_path = output_dir + '/f.{fmt}'\n"
        + "img.convert('RGB').crop((0, 0, 65, 66)).save(processed_path)"
    )
    assert [Image.open(p).size for p in result.images] == [(65, 66)]


def test_long_printed_text_is_scanned_in_linear_time(session):
    import time

    start = time.monotonic()
    result = session.run("print('y' * 65000)\nprint('z.' * 30000)")
    assert result.ok and time.monotonic() - start < 1.0  # once 7 s of the caller's CPU (quadratic regex)
