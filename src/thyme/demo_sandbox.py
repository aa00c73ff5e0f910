"""`thyme demo` while no thyme-tiny is bundled: the sandbox on released-model-shaped code, no model.

It draws a large cluttered scene with one tiny label, then runs, in the real sandbox, code shaped exactly
like what the released Thyme model writes: a hallucinated `image_path`, a crop box that is too small and
partly outside the image, a save under `/mnt/data/temp_processed_images/`, and a calculation. It reports
what each block printed, the images it produced and the repairs the sandbox applied. No model output is
simulated: the code blocks are written by us and labelled as such.
"""

from __future__ import annotations

import pathlib
import random
import shutil

from PIL import Image, ImageDraw, ImageFont

SCENE_SIZE = (2000, 1500)
LABEL_BOX = (1942, 1441, 1990, 1459)  # where the tiny label is drawn

ZOOM_CODE = """\
from PIL import Image
image_path = "/mnt/data/user_image.jpg"
img = Image.open(image_path)
# The label sits in the bottom-right corner; zoom in on it.
x1, y1, x2, y2 = 1950, 1440, 2010, 1465
cropped = img.crop((x1, y1, x2, y2))
zoomed = cropped.resize((cropped.width * 4, cropped.height * 4), Image.LANCZOS)
processed_path = "/mnt/data/temp_processed_images/label_zoom.png"
zoomed.save(processed_path)
print(processed_path)
"""

COMPUTE_CODE = """\
price = 4.75
quantity = 38
print(round(price * quantity, 2))
"""


def draw_scene(path: pathlib.Path, seed: int = 7, label: str = "742") -> pathlib.Path:
    """A 2000x1500 cluttered scene whose only text is a 48x18 px label near the bottom-right corner."""
    rng = random.Random(seed)
    img = Image.new("RGB", SCENE_SIZE, (236, 232, 224))
    draw = ImageDraw.Draw(img)
    for _ in range(400):
        x, y = rng.randrange(SCENE_SIZE[0]), rng.randrange(SCENE_SIZE[1])
        w, h = rng.randrange(10, 160), rng.randrange(10, 160)
        colour = tuple(rng.randrange(60, 230) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + w, y + h), outline=colour, width=rng.randrange(1, 4))
        else:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
    draw.rectangle(LABEL_BOX, fill=(255, 255, 255), outline=(0, 0, 0))
    font = ImageFont.load_default(size=14)
    draw.text((LABEL_BOX[0] + 10, LABEL_BOX[1] + 1), label, fill=(0, 0, 0), font=font)
    img.save(path, quality=92)
    return path


def run_sandbox_demo(out_dir: pathlib.Path, console) -> int:
    """Draw the scene, run both blocks in one sandbox session, copy the outputs to `out_dir`."""
    from rich.panel import Panel
    from rich.syntax import Syntax

    from thyme.sandbox import Sandbox, SandboxConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    scene = draw_scene(out_dir / "scene.jpg")
    console.print(f"[bold]Scene[/]: {scene} ({SCENE_SIZE[0]}x{SCENE_SIZE[1]}), tiny label at {LABEL_BOX}")
    with Sandbox(SandboxConfig(timeout_s=20)) as sandbox:
        console.print(f"[bold]Sandbox layers active[/]: {', '.join(sandbox.isolation)}")
        with sandbox.session(inputs=[scene]) as session:
            for title, code in (("crop and zoom", ZOOM_CODE), ("calculation", COMPUTE_CODE)):
                console.print(Panel(Syntax(code, "python"), title=f"code block ({title}, written by us)"))
                result = session.run(code)
                lines = [f"stdout: {result.stdout.strip()!r}", f"error: {result.error}"]
                lines.append(f"repairs applied: {', '.join(result.repairs) or 'none'}")
                lines.append(f"duration: {result.duration_s * 1000:.1f} ms")
                for i, image in enumerate(result.images):
                    kept = out_dir / f"{title.replace(' ', '_')}_{i}{image.suffix}"
                    shutil.copyfile(image, kept)
                    with Image.open(kept) as im:
                        lines.append(f"image: {kept} ({im.width}x{im.height})")
                console.print(Panel("\n".join(lines), title="sandbox result"))
                if not result.ok:
                    return 1
    return 0
