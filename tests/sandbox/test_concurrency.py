"""Many sessions at once: asyncio and threads, nothing lost or mixed up."""

from __future__ import annotations

import asyncio
import threading

from PIL import Image


def test_32_sessions_concurrently_with_asyncio(sandbox, scene_jpeg):
    n = 32
    sessions = [sandbox.session(inputs=[scene_jpeg]) for _ in range(n)]

    async def episode(k: int, s):
        await s.arun(f"token = {k}\nimport time")
        first = await s.arun("time.sleep(0.2)\nprint(token * 3)")
        second = await s.arun(
            "from PIL import Image\nimg = Image.open(image_path)\n"
            "processed_path = f'{output_dir}/t{token}.png'\n"
            "img.crop((0, 0, 64 + token, 64)).save(processed_path)\nprint(token)"
        )
        return first, second

    async def main():
        return await asyncio.gather(*(episode(k, s) for k, s in enumerate(sessions)))

    try:
        results = asyncio.run(main())
    finally:
        for s in sessions:
            s.close()
    assert len(results) == n
    for k, (first, second) in enumerate(results):
        assert first.ok and first.stdout == f"{k * 3}\n"
        assert second.ok and second.stdout == f"{k}\n"
        assert [Image.open(p).size for p in second.images] == [(64 + k, 64)]


def test_asyncio_timeouts_do_not_block_other_sessions(scene_jpeg):
    from thyme.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=1.0, pool_size=0)) as sb:
        slow, fast = sb.session(inputs=[scene_jpeg]), sb.session(inputs=[scene_jpeg])

        async def main():
            return await asyncio.gather(slow.arun("while True: pass"), fast.arun("print('quick')"))

        stuck, quick = asyncio.run(main())
        assert stuck.timed_out and quick.stdout == "quick\n"
        assert quick.duration_s < 0.5


def test_threads_each_with_a_session(sandbox, scene_jpeg):
    out: dict[int, str] = {}

    def work(k: int) -> None:
        with sandbox.session(inputs=[scene_jpeg]) as s:
            s.run(f"v = {k}")
            for _ in range(5):
                s.run("v = v + 1")
            out[k] = s.run("print(v)").stdout.strip()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {k: str(k + 5) for k in range(8)}
