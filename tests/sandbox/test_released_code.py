"""The contract holds for code shaped like the released Thyme model's: each case is a block in the style the
model writes (hallucinated paths, the /mnt/data prefix, cv aliases, odd indentation, boxes off the image),
run through the real sandbox with every repair on."""

from __future__ import annotations

import numpy as np
from PIL import Image

CROP_ZOOM = """\
import os
from PIL import Image
image_path = "/mnt/data/images/user_upload_0.jpg"
img = Image.open(image_path)
x1, y1, x2, y2 = 1510, 1160, 1690, 1290
cropped_img = img.crop((x1, y1, x2, y2))
zoomed = cropped_img.resize((cropped_img.width * 2, cropped_img.height * 2), Image.Resampling.LANCZOS)
processed_path = os.path.join("/mnt/data/temp_processed_images/", "scene_zoom_8a3f.png")
zoomed.save(processed_path)
print(processed_path)
"""


def test_crop_and_zoom(session):
    result = session.run(CROP_ZOOM)
    assert result.ok, result.error
    assert [Image.open(p).size for p in result.images] == [(360, 260)]
    assert "image_path" in result.repairs and "output_prefix" in result.repairs
    assert "crop_clamp" not in result.repairs  # the box was fine


def test_box_off_the_image_is_clamped_on_the_image_actually_cropped(session):
    code = (
        "from PIL import Image\nimg = Image.open(image_path)\nsmall = img.resize((500, 400))\n"
        "crop = small.crop((460, -20, 520, 30))\n"
        "processed_path = '/mnt/data/temp_processed_images/corner.png'\ncrop.save(processed_path)\n"
        "print(processed_path)"
    )
    result = session.run(code)
    assert result.ok, result.error
    assert "crop_clamp" in result.repairs
    with Image.open(result.images[0]) as im:
        assert im.size == (64, 64)  # clamped into the 500x400 image, enlarged to the 64 px minimum


def test_opencv_with_cv_alias_and_numpy_slice(session):
    code = (
        "import cv2 as cv2_real\nimport numpy as np\n"
        "img = cv.imread(image_path)\n"
        "h, w = img.shape[:2]\n"
        "roi = img[-30:40, 1980:2100]\n"
        "gray = cv.cvtColor(roi, cv.COLOR_BGR2GRAY)\n"
        "processed_path = '/mnt/data/temp_processed_images/roi.png'\n"
        "cv.imwrite(processed_path, gray)\nprint(processed_path)"
    )
    result = session.run(code)
    assert result.ok, result.error
    assert {"cv_alias", "crop_clamp", "output_prefix"} <= set(result.repairs)
    assert np.asarray(Image.open(result.images[0])).shape == (64, 64)


def test_first_line_indented_differently(session):
    code = "    from PIL import Image\nimg = Image.open(image_path)\nprint(img.size)"
    result = session.run(code)
    assert result.ok, result.error
    assert result.stdout == "(2000, 1500)\n" and "indent" in result.repairs


def test_uniformly_indented_block(session):
    code = "    x = 6\n    for i in range(3):\n        x += i\n    print(x)\n"
    result = session.run(code)
    assert result.stdout == "9\n" and "indent" in result.repairs


def test_valid_code_is_never_reformatted(session):
    code = "for i in range(2):\n    print(i)\n"
    result = session.run(code)
    assert result.stdout == "0\n1\n" and result.repairs == []


def test_rotation(session):
    code = (
        "from PIL import Image\nimg = Image.open(image_path)\nrotated = img.rotate(90, expand=True)\n"
        "processed_path = '/mnt/data/temp_processed_images/rotated.jpg'\nrotated.save(processed_path)\n"
        "print(processed_path)"
    )
    result = session.run(code)
    assert [Image.open(p).size for p in result.images] == [(1500, 2000)]


def test_contrast_enhancement(session):
    code = (
        "from PIL import Image, ImageEnhance\nimg = Image.open(image_path).crop((0, 0, 400, 300))\n"
        "enhanced = ImageEnhance.Contrast(img).enhance(2.5)\n"
        "processed_path = '/mnt/data/temp_processed_images/contrast.png'\nenhanced.save(processed_path)\n"
        "print(processed_path)"
    )
    result = session.run(code)
    assert result.ok and len(result.images) == 1


def test_computation_prints_the_number(session):
    result = session.run("a = 3847\nb = 2963\nresult = a * b\nprint(result)")
    assert result.stdout.strip() == str(3847 * 2963) and result.images == []


def test_multi_round_with_error_correction(session):
    first = session.run("from PIL import Image\nimg = Image.open(image_path)\nprint(img.sizee)")
    assert "AttributeError" in first.error
    second = session.run("print(img.size)")  # the model fixes its code; state from the failed block stays
    assert second.stdout == "(2000, 1500)\n"
