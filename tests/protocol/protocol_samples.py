"""Realistic assistant turns in the released Thyme style, shared by the protocol tests (not a test module).

Each sample is the full assistant text after the agent loop inserted sandbox outputs (images flattened to
ms-swift's `<image>` placeholder), written the way the released checkpoints write: reasoning inside
`<think>`, fenced code inside `<code>`, `</think>` + newline + `<answer>`.
"""

from __future__ import annotations

FENCE = "```"

CROP = (
    "<think>The question asks what is written on the small sign near the top-right corner. At this "
    "resolution the sign is only a few pixels tall, so I will crop that region and enlarge it.\n"
    "<code>\n"
    f"{FENCE}python\n"
    "from PIL import Image\n"
    "import os\n"
    "import random\n"
    "\n"
    'image_path = "/data/vstar/sa_4690.jpg"\n'
    "img = Image.open(image_path)\n"
    "x1, y1, x2, y2 = 1510, 120, 1780, 300\n"
    "cropped = img.crop((x1, y1, x2, y2))\n"
    "cropped = cropped.resize((cropped.width * 3, cropped.height * 3), Image.LANCZOS)\n"
    'processed_path = f"/mnt/data/temp_processed_images/sa_4690_{random.randint(1000, 9999)}.jpg"\n'
    "os.makedirs(os.path.dirname(processed_path), exist_ok=True)\n"
    "cropped.save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output><image></sandbox_output>"
    'The enlarged crop shows the sign clearly: it reads "EXIT 12".</think>\n'
    "<answer>EXIT 12</answer>"
)

ROTATE = (
    "<think>The text in the image is upside down, which makes it hard to read. I will rotate the image by "
    "180 degrees.\n"
    "<code>\n"
    f"{FENCE}python\n"
    "from PIL import Image\n"
    'img = Image.open("/data/docs/receipt_0192.png")\n'
    "rotated = img.rotate(180, expand=True)\n"
    'processed_path = "/mnt/data/temp_processed_images/receipt_0192_rotated.png"\n'
    "rotated.save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output><image></sandbox_output>"
    "Now the receipt is upright. The total at the bottom is 23.40.</think>\n"
    "<answer>23.40</answer>"
)

CONTRAST = (
    "<think>The handwriting is faint against the grey paper. Increasing the contrast should help.\n"
    "<code>\n"
    f"{FENCE}python\n"
    "from PIL import Image, ImageEnhance\n"
    'img = Image.open("/data/ocr/note_77.jpg").convert("L")\n'
    "enhanced = ImageEnhance.Contrast(img).enhance(2.5)\n"
    'processed_path = "/mnt/data/temp_processed_images/note_77_contrast.jpg"\n'
    "enhanced.save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output><image></sandbox_output>"
    'With the contrast enhanced, the note says "meet at noon".</think>\n'
    "<answer>meet at noon</answer>"
)

COMPUTE = (
    "<think>The chart gives 1234 units per box and 5678 boxes. I will compute the product exactly.\n"
    "<code>\n"
    f"{FENCE}python\n"
    "units_per_box = 1234\n"
    "boxes = 5678\n"
    "print(units_per_box * boxes)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output>7006652</sandbox_output>"
    "So the total is 7006652 units.</think>\n"
    "<answer>\\boxed{7006652}</answer>"
)

MULTI = (
    "<think>First I locate the table in the lower half.\n"
    "<code>\n"
    f"{FENCE}python\n"
    "from PIL import Image\n"
    'img = Image.open("/data/hr/chart_8k.png")\n'
    'processed_path = "/mnt/data/temp_processed_images/chart_8k_lower.png"\n'
    "img.crop((0, 4000, 8000, 8000)).save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output><image></sandbox_output>"
    "The table is visible; the second row is still small. I zoom into it.\n"
    "<code>\n"
    f"{FENCE}python\n"
    'processed_path = "/mnt/data/temp_processed_images/chart_8k_row2.png"\n'
    "img.crop((1200, 4800, 3600, 5400)).resize((4800, 1200)).save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output><image></sandbox_output>"
    "The second row lists 41.7%.</think>\n"
    "<answer>41.7%</answer>"
)

ERROR_FIX = (
    "<think>I will crop the region with the clock.\n"
    "<code>\n"
    f"{FENCE}python\n"
    "from PIL import Image\n"
    'img = Image.open("/data/vstar/clock.jpg")\n'
    "cropped = img.crop(300, 200, 600, 500)\n"
    'processed_path = "/mnt/data/temp_processed_images/clock_crop.jpg"\n'
    "cropped.save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output>TypeError: Image.crop() takes from 1 to 2 positional arguments but 5 were given"
    "</sandbox_output>"
    "The crop box must be passed as one tuple. Let me fix the call.\n"
    "<code>\n"
    f"{FENCE}python\n"
    "cropped = img.crop((300, 200, 600, 500))\n"
    'processed_path = "/mnt/data/temp_processed_images/clock_crop.jpg"\n'
    "cropped.save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n"
    "</code>"
    "<sandbox_output><image></sandbox_output>"
    "The clock shows ten past three.</think>\n"
    "<answer>(B) 3:10</answer>"
)

REALISTIC = {
    "crop": CROP,
    "rotate": ROTATE,
    "contrast": CONTRAST,
    "compute": COMPUTE,
    "multi": MULTI,
    "error_fix": ERROR_FIX,
}
