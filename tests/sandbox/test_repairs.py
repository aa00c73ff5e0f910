"""Each repair pass: fires when it should, stays quiet otherwise, keeps line numbers, can be switched off."""

from __future__ import annotations

import ast
import os
import traceback

import cv2
import numpy as np
import pytest
from PIL import Image

from thyme.sandbox.clamp import make_runtime_helpers
from thyme.sandbox.repairs import OUTPUT_PREFIX, REPAIR_NAMES, RepairContext, apply_repairs

INPUTS = ("/data/in/photo.jpg", "/data/in/second.png")
EXISTING = frozenset({*INPUTS, "/sbx/out/crop_1.png"})
CTX = RepairContext(input_paths=INPUTS, output_dir="/sbx/out", path_exists=EXISTING.__contains__)


def repair(code: str, ctx: RepairContext = CTX, **kwargs):
    return apply_repairs(code, ctx, **kwargs)


def run(code: str, ctx: RepairContext = CTX, **names):
    """Repair as the worker does, then execute with the run-time helpers (and `cv2` when asked for)."""
    outcome = apply_repairs(code, ctx)
    scope = {**make_runtime_helpers(lambda name: None), **names}
    if "cv2" in outcome.needs:
        scope["cv2"] = cv2
    exec(compile(outcome.code, "<cell>", "exec"), scope)
    return scope


def statement_lines(code: str) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(code)) if isinstance(node, ast.stmt)]


# -- indent ---
@pytest.mark.parametrize(
    "code",
    [
        "    import math\nx = math.sqrt(49)\nresult = int(x) + 2",  # only the first line indented
        "import math\n    x = math.sqrt(49)\n    result = int(x) + 2",  # all but the first line indented
        "    x = 7\n    if x:\n        result = x + 2\n",  # the whole block indented inside <code>
        "# find the value\n    x = 7\n    result = x + 2",  # a comment's indentation does not count
    ],
)
def test_indent_repairs_code_that_does_not_compile(code):
    out = repair(code)
    assert out.applied == ("indent",)
    assert out.code.count("\n") == code.count("\n")
    assert run(code)["result"] == 9


@pytest.mark.parametrize(
    "code",
    [
        "for i in range(3):\n    print(i)\n",  # the reference re-indented this and broke it
        "if True:\n        x = 1\n",
        "def f(a):\n    return a\n\n\nprint(f(2))",
        "x = 1  \t\nprint(x)\r\n",
    ],
)
def test_valid_code_is_never_reindented_or_reformatted(code):
    out = repair(code)
    assert out.code == code and out.applied == ()


def test_code_no_pass_can_fix_comes_back_unchanged():
    code = "    def broken(:\n  pass"
    out = repair(code)
    assert out.code == code and out.applied == ()


# -- format ---
def test_format_removes_fences_and_invisible_characters_keeping_line_numbers():
    code = "```python\r\nx = 1\u200b\r\ny\u00a0= x + 1\r\nz = 1 / 0\r\n```"
    out = repair(code)
    assert out.applied == ("format",)
    with pytest.raises(ZeroDivisionError) as info:
        exec(compile(out.code, "<cell>", "exec"), {})
    assert traceback.extract_tb(info.value.__traceback__)[-1].lineno == 4


def test_format_fixes_mixed_tabs_and_spaces():
    assert run("if True:\n\tx = 1\n        y = x + 1\n")["y"] == 2
    assert run("for i in range(2):\n\tif i:\n\t    total = i * 10\n")["total"] == 10


def test_format_fixes_blanks_after_a_line_continuation_and_a_bom():
    out = repair("\ufeffx = 1 + \\   \n    2\n")
    assert out.applied == ("format",) and run("\ufeffx = 1 + \\   \n    2\n")["x"] == 3


def test_format_leaves_string_contents_alone():
    code = 's = "a\u00a0b\u200b"\nt = """\n```\n"""\nu\u00a0= 1 + \\ \n  1'
    scope = run(code)
    assert scope["s"] == "a\u00a0b\u200b" and scope["t"] == "\n```\n" and scope["u"] == 2


def test_indent_and_format_together():
    code = "    x = 1\u00a0\n    y = x + 1\n"
    out = repair(code)
    assert out.applied == ("indent", "format") and run(code)["y"] == 2


# -- output_prefix ---
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (f"p = '{OUTPUT_PREFIX}/a.png'", "p = '/sbx/out/a.png'"),
        (f'p = "{OUTPUT_PREFIX}/"', 'p = "/sbx/out/"'),
        (f"p = '{OUTPUT_PREFIX}'  # save here", "p = '/sbx/out'  # save here"),
        (f"p = f'{OUTPUT_PREFIX}/{{stem}}_{{n:03d}}.png'", "p = f'/sbx/out/{stem}_{n:03d}.png'"),
        (f"p = r'{OUTPUT_PREFIX}/x.png'", "p = r'/sbx/out/x.png'"),
        (f"os.makedirs('{OUTPUT_PREFIX}', exist_ok=True)", "os.makedirs('/sbx/out', exist_ok=True)"),
        (f"p = os.path.join('{OUTPUT_PREFIX}', name)", "p = os.path.join('/sbx/out', name)"),
    ],
)
def test_output_prefix_maps_onto_the_output_dir(code, expected):
    out = repair(code)
    assert out.code == expected and out.applied == ("output_prefix",)


@pytest.mark.parametrize(
    "code",
    [
        "p = '/mnt/data/other/x.png'",
        f"p = '{OUTPUT_PREFIX}_old/x.png'",
        f"p = b'{OUTPUT_PREFIX}/x.png'",
        f"print('saved to {OUTPUT_PREFIX}/x.png')",
        f"p = f'{{root}}{OUTPUT_PREFIX}/x.png'",
    ],
)
def test_output_prefix_leaves_other_strings_alone(code):
    out = repair(code)
    assert out.code == code and out.applied == ()


def test_output_prefix_split_over_implicitly_joined_literals():
    out = repair("p = ('/mnt/data/'\n     'temp_processed_images/x.png')\nq = 1")
    scope = {}
    exec(out.code, scope)
    assert scope["p"] == "/sbx/out/x.png" and statement_lines(out.code) == [1, 3]


def test_output_dir_that_needs_escaping():
    ctx = RepairContext(input_paths=(), output_dir="/tmp/it's {here}")
    out = repair(f"p = '{OUTPUT_PREFIX}/a.png'\nq = f'{OUTPUT_PREFIX}/{{n}}.png'", ctx=ctx)
    scope = {"n": 3}
    exec(out.code, scope)
    assert scope["p"] == "/tmp/it's {here}/a.png" and scope["q"] == "/tmp/it's {here}/3.png"


def test_saving_under_the_prefix_lands_in_the_output_dir(tmp_path):
    ctx = RepairContext(input_paths=(), output_dir=str(tmp_path))
    code = (
        "import os\nfrom PIL import Image\n"
        f"os.makedirs('{OUTPUT_PREFIX}', exist_ok=True)\n"
        f"processed_path = os.path.join('{OUTPUT_PREFIX}/', 'zoom.png')\n"
        "Image.new('RGB', (8, 8)).save(processed_path)"
    )
    scope = run(code, ctx=ctx)
    assert scope["processed_path"] == os.path.join(str(tmp_path), "zoom.png")
    assert Image.open(tmp_path / "zoom.png").size == (8, 8)


def test_printed_numbers_are_never_reformatted():
    code = "x = 3.14159\nprint(f'{x:.2f}', '%.1f' % x)"
    assert repair(code).code == code


# -- image_path ---
def test_hallucinated_image_path_becomes_the_first_input():
    code = '# load\nimage_path = "/mnt/data/user_image.jpg"\nprint(image_path)'
    out = repair(code)
    assert out.code == "# load\nimage_path = '/data/in/photo.jpg'\nprint(image_path)"
    assert out.applied == ("image_path",)


def test_image_path_matching_an_input_by_name():
    out = repair("image_path: str = '/somewhere/else/second.png'")
    assert out.code == "image_path: str = '/data/in/second.png'"


def test_existing_image_path_is_kept():
    code = "image_path = '/data/in/second.png'"
    assert repair(code).code == code


def test_processed_image_from_an_earlier_step_is_checked_after_mapping():
    out = repair(f"image_path = '{OUTPUT_PREFIX}/crop_1.png'")
    assert out.code == "image_path = '/sbx/out/crop_1.png'" and out.applied == ("output_prefix",)
    missing = repair(f"image_path = '{OUTPUT_PREFIX}/never_saved.png'")
    assert missing.code == "image_path = '/data/in/photo.jpg'" and missing.applied == ("image_path",)


@pytest.mark.parametrize(
    "code",
    [
        "path = '/nope/x.jpg'",
        "image_path = other",
        "img = Image.open('/nope/x.jpg')",
        "image_path == '/nope/x.jpg'",
    ],
)
def test_image_path_ignores_everything_else(code):
    assert repair(code).code == code


def test_image_path_without_inputs_is_left_alone():
    ctx = RepairContext(input_paths=(), output_dir="/sbx/out")
    assert repair("image_path = '/nope.jpg'", ctx=ctx).applied == ()


def test_a_path_check_that_fails_counts_as_missing():
    def refuse(path: str) -> bool:
        raise PermissionError(path)

    ctx = RepairContext(input_paths=INPUTS, output_dir="/sbx/out", path_exists=refuse)
    assert repair("image_path = 'x.jpg'", ctx=ctx).code == "image_path = '/data/in/photo.jpg'"


# -- cv_alias ---
@pytest.mark.parametrize("alias", ["cv", "cv3", "cv4", "CV"])
def test_cv_alias(alias):
    out = repair(f"gray = {alias}.cvtColor(img, {alias}.COLOR_BGR2GRAY)  # {alias}.x")
    assert out.code == f"gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)  # {alias}.x"
    assert out.applied == ("cv_alias",) and out.needs == frozenset({"cv2"})


def test_cv_alias_runs_against_the_real_cv2():
    img = np.asarray(Image.new("RGB", (20, 10), (10, 200, 30)))
    scope = run("gray = cv.cvtColor(img, cv.COLOR_RGB2GRAY)\nh = CV.resize(gray, (4, 2)).shape", img=img)
    assert np.array_equal(scope["gray"], cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)) and scope["h"] == (2, 4)


@pytest.mark.parametrize(
    "code",
    [
        "import cv2 as cv\nimg = cv.imread(p)",
        "cv = make_cv()\ncv.run()",
        "def f(cv):\n    return cv.x",
        "for cv in items:\n    cv.go()",
        "print(cv)",
    ],
)
def test_cv_alias_respects_names_the_code_binds(code):
    out = repair(code)
    assert out.code == code and out.applied == ()


def test_cv_alias_respects_names_the_session_binds():
    ctx = RepairContext(input_paths=(), output_dir="/o", bound_names=frozenset({"cv"}))
    assert repair("cv.imread(p)", ctx=ctx).applied == ()


def test_cv2_is_not_requested_when_the_code_imports_it():
    out = repair("import cv2\nimg = cv.imread(p)")
    assert out.applied == ("cv_alias",) and out.needs == frozenset()


# -- crop_clamp (source side; the run-time side is in test_clamp.py) ---
def test_crops_and_box_slices_are_routed_through_the_helpers():
    out = repair("a = img.crop((1, 2, 3, 4))\nb = arr[1:5, 2:9]\nc = arr[0:4, 0:4, ::-1]")
    assert out.code.splitlines() == [
        "a = __thyme_crop__(img, (1, 2, 3, 4))",
        "b = __thyme_slice__(arr, (slice(1, 5), slice(2, 9)))",
        "c = __thyme_slice__(arr, (slice(0, 4), slice(0, 4), slice(None, None, -1)))",
    ]
    assert out.applied == ()  # recorded at run time, and only when a box changes


@pytest.mark.parametrize(
    "code",
    [
        "arr[1:5, 2:9] = 0",
        "arr[1:5, 2:9] += 1",
        "del arr[1:5, 2:9]",
        "x = arr[:, 1:3]",
        "x = arr[1:4, ::2]",
        "x = arr[1:4, 0:8:2]",
        "x = a[1:2]",
        "x = a[1, 2:3]",
        "img.crop(box=b)",
        "img.crop()",
        "img.crop(*b)",
        "thing.crop(a, b)",
    ],
)
def test_what_is_not_a_crop_is_not_rewritten(code):
    assert repair(code).code == code


def test_slices_are_not_rewritten_where_slice_is_rebound():
    code = "slice = img[100:200, 50:150]\nroi = arr[0:2, 0:3]"
    assert repair(code).code == code
    ctx = RepairContext(input_paths=(), output_dir="/o", bound_names=frozenset({"slice"}))
    assert (
        repair("roi = arr[0:2, 0:3]\nc = img.crop(b)", ctx=ctx).code
        == "roi = arr[0:2, 0:3]\nc = __thyme_crop__(img, b)"
    )


def test_nested_crops_and_slices():
    out = repair("x = img.crop(b1).crop(b2)[0:10, 0:20]\ny = f(img.crop(a[0:1, 2:3]))")
    assert out.code.splitlines() == [
        "x = __thyme_slice__(__thyme_crop__(__thyme_crop__(img, b1), b2), (slice(0, 10), slice(0, 20)))",
        "y = f(__thyme_crop__(img, __thyme_slice__(a, (slice(0, 1), slice(2, 3)))))",
    ]


def test_evaluation_order_and_counts_are_kept():
    code = (
        "log = []\n"
        "def e():\n    log.append('E')\n    return img\n"
        "def a():\n    log.append('A')\n    return (0, 0, 100, 100)\n"
        "def i(v):\n    log.append(v)\n    return v\n"
        "c = e().crop(a())\n"
        "s = arr[i(1):i(2), i(3):i(4)]"
    )
    scope = run(code, img=Image.new("RGB", (200, 200)), arr=np.zeros((10, 10)))
    assert scope["log"] == ["E", "A", 1, 2, 3, 4]


def test_odd_spellings_still_run():
    img = Image.new("RGB", (300, 200), (1, 2, 3))
    arr = np.arange(300 * 200).reshape(200, 300)
    code = (
        "a = (img).crop((10, 10, 100, 100),)\n"
        "b = img.crop(  # the label\n    (0, 0,\n     90, 90)\n)\n"
        "c = arr[(5):(70) ,\n        0 :90,].sum()\n"
        "d = f'{img.crop((0, 0, 80, 80)).size}'\n"
        "e = arr[0:100, 0:100][10:80, 10:80]\n"
        "f = (img.\n     crop\n((0, 0, 70, 70)))\n"  # line breaks inside the text the rewrite replaces
        "g = arr[2\n        :120, 0:\n130]\n"
        "h = (arr\n     [0:10, 0:10]).shape"
    )
    out = repair(code)
    assert "__thyme_crop__((img), (10, 10, 100, 100),)" in out.code
    assert statement_lines(out.code) == statement_lines(code)
    scope = run(code, img=img, arr=arr)
    assert scope["a"].size == (90, 90) and scope["b"].size == (90, 90)
    assert scope["c"] == arr[5:70, 0:90].sum() and scope["d"] == "(80, 80)"
    assert np.array_equal(scope["e"], arr[10:80, 10:80]) and scope["f"].size == (70, 70)
    assert np.array_equal(scope["g"], arr[2:120, 0:130]) and scope["h"] == (
        64,
        64,
    )  # 10 x 10 grows to the minimum


def test_unicode_before_a_rewritten_node_on_the_same_line():
    code = (
        "s = 'héllo wörld ✓ 日本'; c = img.crop((1, 2, 3, 4)); g = cv.x\n"
        f"t = '→'; p = '{OUTPUT_PREFIX}/a.png'; r = arr[0:2, 0:3]"
    )
    assert repair(code).code.splitlines() == [
        "s = 'héllo wörld ✓ 日本'; c = __thyme_crop__(img, (1, 2, 3, 4)); g = cv2.x",
        "t = '→'; p = '/sbx/out/a.png'; r = __thyme_slice__(arr, (slice(0, 2), slice(0, 3)))",
    ]


def test_tracebacks_point_at_the_lines_the_model_wrote():
    code = (
        "import numpy as np  # tools\n"
        f"p = ('{OUTPUT_PREFIX}/'\n     'x.png')\n"
        "c = img.crop((0, 0,\n              50, 50))\n"
        "r = arr[0:20,\n        0:30]\n"
        "g = cv.COLOR_BGR2GRAY\n"
        "boom = 1 / 0\n"
    )
    out = repair(code)
    assert out.applied == ("output_prefix", "cv_alias")
    assert "# tools" in out.code and statement_lines(out.code) == statement_lines(code)
    with pytest.raises(ZeroDivisionError) as info:
        run(code, img=Image.new("RGB", (100, 100)), arr=np.zeros((50, 50)))
    assert traceback.extract_tb(info.value.__traceback__)[-1].lineno == 9


# -- switching and robustness ---
SAMPLES = {
    "indent": "    x = 1\ny = 2",
    "format": "x = 1\u200b",
    "output_prefix": f"p = '{OUTPUT_PREFIX}/x.png'",
    "image_path": "image_path = '/nope/x.jpg'",
    "cv_alias": "cv.imread(p)",
    "crop_clamp": "img.crop((0, 0, 1, 1))",
}


@pytest.mark.parametrize("name", REPAIR_NAMES)
def test_each_pass_can_be_switched_off(name):
    code = SAMPLES[name]
    alone = repair(code, enabled=[name])
    others = repair(code, enabled=[n for n in REPAIR_NAMES if n != name])
    assert alone.code != code and others.code == code and name not in others.applied
    assert (name in alone.applied) == (name != "crop_clamp")  # crop_clamp is reported at run time


def test_nothing_enabled_changes_nothing():
    for code in SAMPLES.values():
        assert repair(code, enabled=()) == repair(code, enabled=[]) and repair(code, enabled=()).code == code


def test_unknown_pass_name_is_an_error_that_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"typo.*valid names: indent, format"):
        repair("x = 1", enabled=["indent", "typo"])
    assert repair("    x = 1", enabled="indent").applied == ("indent",)


@pytest.mark.parametrize(
    "code",
    [
        "",
        "\0\0",
        "x = '\0'",
        "(" * 5000,
        "x = " + "[" * 300 + "]" * 300,
        "\ufeff",
        "img.crop(" * 50,
        "é" * 1000,
        "x = '\udc80'",
        "```",
        "\t\t\n\r\r",
        "x = img" + ".crop(b)" * 400,
    ],
)
def test_garbage_never_raises(code):
    out = repair(code)
    assert isinstance(out.code, str) and (out.code == code or ast.parse(out.code))


def test_huge_code_is_repaired_in_one_pass():
    body = "".join(f"v{i} = img.crop(({i}, 0, {i} + 64, 64))  # {i}\n" for i in range(5000))
    out = repair(f"image_path = '/x/second.png'\n{body}")
    assert out.applied == ("image_path",)
    assert out.code.count("__thyme_crop__(img, (") == 5000 and out.code.count("\n") == 5001
