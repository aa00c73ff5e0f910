"""The small built-in corpus our offline BPE tokenizer is trained on.

Why: there is no model hub here, and tests need a tokenizer whose merges fit what a Thyme model reads and
writes: English questions and reasoning about images, Python in the style of the released model's code
blocks (PIL crops, cv2 rotations, numpy contrast stretches, printed results), digits and punctuation.
`corpus_texts()` is deterministic (a fixed seed for the procedural part), so the trained tokenizer is too.
The Thyme tags and chat markers are deliberately absent: they become single added tokens, not merges.
"""

from __future__ import annotations

import random

_PROSE = """\
The image shows a busy street with cars, shops and people walking along the pavement.
What is the number written on the small label in the lower right corner of the picture?
Which colour is the car parked next to the red door? Answer with a single word.
How many birds are sitting on the wire above the road? Please answer yes or no.
Question: What time does the clock on the tower show? Options: A. 3:15 B. 9:45 C. 12:00 D. 6:30
Please select the correct answer from the options above. Hint: look at the top of the image.
Answer the question using a single word or phrase. The answer is the text on the blue sign.
I need to look closer at the region around the sign, because the text is too small to read.
The label is tiny and blurry at this resolution, so I will crop the area and enlarge it.
Let me zoom into the upper left part of the image where the poster is hanging on the wall.
After cropping, the digits are clearly visible: the label reads 4721.
The text appears to be rotated by 90 degrees, so I should rotate the image before reading it.
The contrast is very low; stretching the histogram should make the faint letters legible.
Now the processed image shows the word clearly. It says "harbour" in grey letters.
To compute the product exactly, I will write a short calculation instead of doing it in my head.
The sum of the three numbers is 1843, and their product is 30451200.
The image is 1920 pixels wide and 1080 pixels high, so the crop box must stay inside these bounds.
Based on the zoomed view, the answer is B. The sign on the left says "open", not "closed".
The chart has four bars; the tallest bar belongs to March with a value of 87 percent.
A table lists the prices: apples cost 2.50, bread costs 3.75 and milk costs 1.20 per unit.
There is a person in a yellow jacket holding an umbrella near the bus stop.
The document is a receipt dated 2023-07-14 with a total of 48.90 euros.
First, I locate the object. Second, I crop it. Third, I read the value and check the result.
The rotated text reads "north gate" after turning the picture by 180 degrees.
You are a helpful assistant that can look closer at images and calculate by writing Python.
Think step by step. Whenever cropping, zooming, rotating or an exact calculation would help, write code.
A sandbox runs the code and shows the result: the images the code saved, or else what it printed.
Then continue reasoning; you may write more code. Finally give the answer on its own line.
User Image Path: "/mnt/data/images/photo.jpg" User Image Size: "1024x768"
Output Format (strict adherence required): reasoning first, then the final answer.
Traceback (most recent call last): File "<string>", line 3, in <module> NameError: name 'img' is not defined
ValueError: tile cannot extend outside image. IndexError: list index out of range.
The colours red, green, blue, yellow, orange, purple, black, white and grey appear in the scene.
Numbers: zero, one, two, three, four, five, six, seven, eight, nine, ten, hundred, thousand, million.
"""

_CODE = '''\
```python
from PIL import Image

image_path = "/mnt/data/images/photo.jpg"
image = Image.open(image_path)
width, height = image.size
print(width, height)
```
```python
import os
from PIL import Image

img = Image.open(image_path)
x1, y1, x2, y2 = 820, 610, 1010, 700
cropped = img.crop((x1, y1, x2, y2))
zoomed = cropped.resize((cropped.width * 4, cropped.height * 4), Image.LANCZOS)
processed_path = os.path.join(output_dir, "cropped_label.png")
zoomed.save(processed_path)
print(processed_path)
```
```python
import cv2
import numpy as np

img = cv2.imread(image_path)
rotated = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
processed_path = "/mnt/data/temp_processed_images/rotated_001.png"
cv2.imwrite(processed_path, rotated)
print(processed_path)
```
```python
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

image = Image.open(image_path).convert("L")
arr = np.asarray(image, dtype=np.float32)
low, high = np.percentile(arr, 1), np.percentile(arr, 99)
stretched = np.clip((arr - low) / (high - low + 1e-6) * 255.0, 0, 255).astype(np.uint8)
enhanced = ImageEnhance.Contrast(Image.fromarray(stretched)).enhance(2.0)
processed_path = f"{output_dir}/contrast_enhanced.png"
enhanced.save(processed_path)
print(processed_path)
```
```python
values = [347, 29, 118]
total = sum(values)
product = 1
for v in values:
    product *= v
print(f"sum = {total}, product = {product}")
print(round(total / len(values), 2))
```
```python
import math

area = 0.5 * 12.4 * 7.9
angle = math.degrees(math.atan2(3.0, 4.0))
print("area:", area, "angle:", round(angle, 3))
```
```python
h, w = img.shape[:2]
crop = img[int(h * 0.75):h, int(w * 0.6):w]
crop = cv2.resize(crop, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
_, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
cv2.imwrite(os.path.join(output_dir, "binary.png"), binary)
```
```python
def crop_region(path, box, scale=2):
    """Crop a box (left, top, right, bottom) and enlarge it."""
    with Image.open(path) as im:
        region = im.crop(box)
        return region.resize((region.width * scale, region.height * scale))

left, top, right, bottom = 100, 50, 400, 300
result = crop_region(image_path, (left, top, right, bottom), scale=3)
processed_path = os.path.join(output_dir, "region.png")
result.save(processed_path)
print(processed_path)
```
```python
image = Image.open(image_path)
rotated = image.rotate(180, expand=True)
if rotated.mode != "RGB":
    rotated = rotated.convert("RGB")
rotated.save(processed_path := os.path.join(output_dir, "rot180.jpg"), quality=95)
print(processed_path)
```
'''

# Extra vocabulary so the BPE learns whole words for common English and the image/array APIs the model writes.
_LEXICON = """\
about above across after again against almost along already also although always among another any anything
around because before behind below beneath beside between beyond both bright brown building but by can
cannot car cat centre certain chair change character check choose circle city clear close cloud column
compare complete consider contain could count country cover cup dark data date day describe detail
different direction distance document does dog done down during each early edge either else empty end
enough entire even every everything exactly example except face fact far few field figure final find fine
first floor flower follow food form found frame front full give glass going good graph green ground group
half hand has have head help here high hold horse house however identify important include indicate
information inside instead into item just keep kind know last later least less letter level light like
line list little long look lot made main make man many map mark match may maybe mean measure might more
most mountain move much must name near need never new next night nothing notice now object obvious of
off often old only open order other our out outside over page paper part pattern perhaps person photo
picture place plate point position possible present print probably problem question quite rather read
reading really reason rectangle result right road room round row same scene screen second see seem
shape sheet should show side similar since size sky some something sometimes square start still store
street such surface table take than that their them then there these they thing think this those though
three through time title together too toward tree true turn under until up upon us use usually very view
visible wall want was water way we well were what when where whether which while who whole why wide will
window with within without woman word work would write year yes yet you your
Image ImageDraw ImageFont ImageFilter ImageEnhance ImageOps open save crop resize rotate transpose convert
thumbnail paste filter enhance autocontrast equalize grayscale invert expand fill mode size width height
FLIP_LEFT_RIGHT FLIP_TOP_BOTTOM ROTATE_90 ROTATE_180 ROTATE_270 BICUBIC BILINEAR NEAREST LANCZOS Resampling
cv2 imread imwrite resize rotate cvtColor threshold GaussianBlur medianBlur equalizeHist createCLAHE apply
COLOR_BGR2RGB COLOR_RGB2BGR COLOR_BGR2GRAY INTER_LINEAR INTER_CUBIC INTER_AREA ROTATE_90_COUNTERCLOCKWISE
getRotationMatrix2D warpAffine findContours boundingRect rectangle putText addWeighted normalize NORM_MINMAX
numpy np array asarray zeros ones arange linspace clip percentile mean std min max sum prod abs round
astype uint8 float32 int64 shape reshape transpose stack concatenate where argmax argmin sort unique
math sqrt floor ceil log exp pi sin cos tan atan2 degrees radians hypot factorial gcd isclose
os path join exists makedirs basename splitext listdir print len range enumerate zip sorted int float str
def return for in if elif else while try except finally with as import from lambda None True False
"""

# Scene words for the procedural lines.
_SCENE = (
    "label sign number text digit colour image crop zoom rotate contrast region corner value answer "
    "left right top bottom upper lower middle small large red green blue black white grey"
)
_WORDS = _SCENE.split()


def _procedural(rng: random.Random, n: int) -> list[str]:
    """Varied numbers, boxes and arithmetic so digits, commas and operators get enough counts."""
    lines = []
    for _ in range(n):
        a, b, c = rng.randint(0, 9999), rng.randint(0, 999), rng.randint(1, 99)
        x1, y1 = rng.randint(0, 1500), rng.randint(0, 1000)
        x2, y2 = x1 + rng.randint(32, 400), y1 + rng.randint(32, 300)
        word = rng.choice(_WORDS)
        lines.append(f"crop_box = ({x1}, {y1}, {x2}, {y2})  # the {word} region")
        lines.append(f"print({a} * {b} + {c})  # {a * b + c}")
        lines.append(f"The {word} in the {rng.choice(_WORDS)} part reads {a}; {b} + {c} = {b + c}.")
        lines.append(f'processed_path = "/mnt/data/temp_processed_images/{word}_{a:04d}.png"')
        lines.append(f"x = {a / c:.3f}; y = {b - c}; print(x, y, x > y)")
    return lines


def corpus_texts(seed: int = 0, n_procedural: int = 400) -> list[str]:
    """The training texts, in a fixed order: prose lines, whole code blocks, procedural lines."""
    rng = random.Random(seed)
    prose = _PROSE.splitlines()
    code = [block + "```" for block in _CODE.split("```\n") if block.strip()]
    lexicon = [f"{w} {w.capitalize()} {w}" for w in _LEXICON.split()]
    return prose * 4 + code * 4 + lexicon * 2 + _procedural(rng, n_procedural)
