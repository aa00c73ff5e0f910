"""The inotify watcher behind the collector: reports changes, and asks for a full scan when it lost any."""

from __future__ import annotations

from PIL import Image

from thyme.sandbox.watch import _EVENT, IN_Q_OVERFLOW, Watcher


def test_reports_files_written_in_the_tree(tmp_path):
    watcher = Watcher()
    owner = object()
    assert watcher.watch(owner, str(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    changes = watcher.take(owner)
    assert changes.paths == {"a.png"} and changes.new_dirs == {"sub"} and not changes.rescan
    assert watcher.take(owner).paths == set()  # reported once
    watcher.forget(owner)
    assert watcher.take(owner).rescan  # unknown owners are told to scan
    watcher.close()


def test_queue_overflow_means_rescan(tmp_path):
    watcher = Watcher()
    owner = object()
    watcher.watch(owner, str(tmp_path))
    watcher._dispatch(_EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0))
    assert watcher.take(owner).rescan
    watcher.close()


def test_subdirectories_are_still_collected(session):
    code = "import os\nfrom PIL import Image\nos.makedirs(output_dir + '/deep/er', exist_ok=True)\n"
    first = session.run(code + "Image.new('RGB', (70, 70)).save(output_dir + '/deep/er/a.png')")
    assert [Image.open(p).size for p in first.images] == [(70, 70)]
    second = session.run("Image.new('RGB', (71, 71)).save(output_dir + '/deep/er/b.png')")
    assert [Image.open(p).size for p in second.images] == [(71, 71)]
    third = session.run("Image.new('RGB', (72, 72)).save(output_dir + '/top.png')")
    assert [Image.open(p).size for p in third.images] == [(72, 72)]


def test_files_renamed_into_place_are_collected(session):
    code = (
        "import os\nfrom PIL import Image\n"
        "Image.new('RGB', (73, 73)).save(output_dir + '/tmp.part', format='PNG')\n"
        "os.rename(output_dir + '/tmp.part', output_dir + '/final.png')"
    )
    result = session.run(code)
    assert [Image.open(p).size for p in result.images] == [(73, 73)]


def test_plain_sessions_never_fall_back_to_scanning(session):
    for i in range(3):
        session.run(f"from PIL import Image\nImage.new('RGB', (64, 64)).save(output_dir + '/f{i}.png')")
    assert session._collector._watcher is not None


def test_concurrent_takers_never_lose_an_event(tmp_path):
    """Many threads taking their own changes at once: every file written is reported to its owner."""
    import threading

    watcher = Watcher()
    owners = [object() for _ in range(8)]
    dirs = []
    for k, owner in enumerate(owners):
        d = tmp_path / f"d{k}"
        d.mkdir()
        watcher.watch(owner, str(d))
        dirs.append(d)
    missed = []

    def work(k: int) -> None:
        for i in range(200):
            (dirs[k] / f"f{i}.png").write_bytes(b"x")
            if f"f{i}.png" not in watcher.take(owners[k]).paths:
                missed.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(owners))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watcher.close()
    assert missed == []
