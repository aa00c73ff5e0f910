"""Every built-in task end to end on files written here: load -> prompt -> extract -> score, with answers
that are right, wrong and unreadable, taken out of full assistant turns as the agent produces them."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_files import b64, image_struct, jpeg_bytes, png_bytes, write_parquet, write_toyworld, write_tsv

from thyme.eval import TaskSpec, get_task, task_names
from thyme.eval.loaders import DataError
from thyme.eval.runner import record_meta
from thyme.protocol import extract_answer

MCQ_INSTRUCTION = "Please select the correct answer from the options above."
BUILT_IN = {
    "vstar",
    "hrbench4k",
    "hrbench8k",
    "mme_realworld",
    "mme_realworld_lite",
    "mathvista_mini",
    "hallusionbench",
    "pope",
    "ocrbench",
    "chartqa",
    "mathverse_vision_only",
    "toyworld_zoom",
    "toyworld_compute",
    "toyworld_rotate",
    "toyworld_contrast",
}


def turn(answer: str) -> str:
    """A complete assistant turn with a code step, ending in `answer`."""
    return (
        "<think>Let me look closer. <code>\n```python\nprint(1)\n```\n</code>"
        f"<sandbox_output>1</sandbox_output> Now I can tell.</think> <answer>{answer}</answer>"
    )


def assert_round_trip(task: TaskSpec, sample, right: list[str], wrong: list[str]) -> None:
    for text in right:
        prediction = task.extract(extract_answer(turn(text)), sample)
        assert task.score(prediction, sample) == 1.0, (task.name, sample.id, text, prediction)
    for text in wrong:
        prediction = task.extract(extract_answer(turn(text)), sample)
        assert task.score(prediction, sample) == 0.0, (task.name, sample.id, text, prediction)
    assert task.score(task.extract(None, sample), sample) == 0.0  # no answer at all


def load(name: str, data: Path, tmp_path: Path) -> dict:
    return {s.id: s for s in get_task(name).load(data, tmp_path / "cache")}


# -- the registry ------------------------------------------------------------------------------------------
def test_all_built_in_tasks_are_registered_with_a_version_and_a_data_hint():
    assert set(task_names()) >= BUILT_IN
    for name in BUILT_IN:
        task = get_task(name)
        assert task.version and task.description and task.data_hint, name


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_without_data_the_error_says_what_to_pass(name, tmp_path):
    with pytest.raises(DataError, match="--data"):
        list(get_task(name).load(None, tmp_path))


# -- MCQ: V*, HR-Bench, MME-RealWorld ----------------------------------------------------------------------
def mcq_rows(extra: dict | None = None, letters: str = "ABCD") -> list[dict]:
    texts = ["red", "blue", "green", "black", "white"]
    first = {
        "index": 0,
        "image": b64(jpeg_bytes(1)),
        "question": "What is the color of the bag?",
        "answer": "B",
        "category": "direct_attributes",
        **{c: texts[i] for i, c in enumerate(letters)},
    }
    second = {
        "index": 1,
        "image": "0",
        "question": "Is the cup on the left or right of the plate?",
        "A": "left",
        "B": "right",
        "answer": "A",
        "category": "relative_position",
    }
    return [{**first, **(extra or {})}, {**second, **(extra or {})}]


@pytest.mark.parametrize("name", ["vstar", "hrbench4k", "hrbench8k"])
def test_mcq_benchmarks(name, tmp_path):
    data = write_tsv(tmp_path / f"{name}.tsv", mcq_rows({"cycle_category": "cycle1"}))
    task = get_task(name)
    samples = load(name, data, tmp_path)
    bag, cup = samples["0"], samples["1"]
    assert task.prompt(bag) == (
        "Question: What is the color of the bag?\nOptions:\nA. red\nB. blue\nC. green\nD. black\n"
        + MCQ_INSTRUCTION
    )
    assert bag.image == cup.image
    assert (bag.category, bag.meta["cycle_category"]) == ("direct_attributes", "cycle1")
    assert_round_trip(task, bag, right=["B", "(B) blue", "blue", "The answer is B."], wrong=["A", "C. green"])
    assert_round_trip(task, cup, right=["A", "left"], wrong=["B", "A or B", "I am not sure"])


def test_mcq_hint_goes_into_the_prompt(tmp_path):
    data = write_tsv(tmp_path / "v.tsv", mcq_rows({"hint": "The bag is on the chair."}))
    sample = load("vstar", data, tmp_path)["0"]
    assert get_task("vstar").prompt(sample).startswith("Hint: The bag is on the chair.\nQuestion: What is")


def test_mme_realworld_five_options_and_sub_task_categories(tmp_path):
    rows = mcq_rows({"category": "Perception/Monitoring", "l2-category": "counting"}, letters="ABCDE")
    rows[1].update(C="up", D="down", E="The image does not feature the objects")
    samples = load("mme_realworld", write_tsv(tmp_path / "MME-RealWorld.tsv", rows), tmp_path)
    task = get_task("mme_realworld")
    assert samples["0"].choices["E"] == "white"
    assert task.prompt(samples["0"]).endswith("E. white\n" + MCQ_INSTRUCTION)
    assert (samples["0"].category, samples["0"].meta["l2-category"]) == ("Perception/Monitoring", "counting")
    assert_round_trip(task, samples["1"], right=["A", "(A) left"], wrong=["E", "The best answer is D"])


def test_mme_realworld_lite_options_from_the_list_column(tmp_path):
    rows = [
        {
            "index": "lite_1",
            "image": b64(png_bytes()),
            "question": "How many cars are there?",
            "multi-choice options": str(["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) None of the above"]),
            "answer": "C",
            "category": "Perception/Autonomous_Driving",
            "l2-category": "counting",
        }
    ]
    task = get_task("mme_realworld_lite")
    [sample] = load("mme_realworld_lite", write_tsv(tmp_path / "lite.tsv", rows), tmp_path).values()
    assert task.prompt(sample) == (
        "Question: How many cars are there?\nOptions:\nA. 1\nB. 2\nC. 3\nD. 4\nE. None of the above\n"
        + MCQ_INSTRUCTION
    )
    assert_round_trip(task, sample, right=["C", "(C) 3"], wrong=["3 or 4", "B"])


def test_mcq_files_that_are_not_the_benchmark_are_refused(tmp_path):
    no_options = [{"index": 0, "image": b64(png_bytes()), "question": "q", "answer": "A"}]
    with pytest.raises(DataError, match="no options"):
        list(get_task("vstar").load(write_tsv(tmp_path / "a.tsv", no_options), tmp_path / "c"))
    bad_gold = mcq_rows()
    bad_gold[0]["answer"] = "purple"
    with pytest.raises(DataError, match=r"gold answer 'purple' is none of the options A, B, C, D"):
        list(get_task("vstar").load(write_tsv(tmp_path / "b.tsv", bad_gold), tmp_path / "c"))


def test_mcq_matching_is_an_explicit_choice():
    from thyme.eval import EvalSample, configure_task

    task = get_task("vstar")
    lenient = configure_task(task, mcq_matching="lenient")
    sample = EvalSample("1", "Which?", "B", choices={"A": "a red car", "B": "a blue car"})
    assert task.extract("b", sample) is None and lenient.extract("b", sample) == "B"
    assert lenient.scoring == {"mcq_matching": "lenient"} and lenient.version == task.version
    assert configure_task(task, mcq_matching="vlmevalkit") is task
    mathvista = configure_task(get_task("mathvista_mini"), mcq_matching="lenient")
    assert (
        mathvista.extract("(b)", sample) == "B" and get_task("mathvista_mini").extract("(b)", sample) is None
    )
    with pytest.raises(ValueError, match="choose vlmevalkit or lenient"):
        configure_task(task, mcq_matching="fuzzy")
    with pytest.raises(ValueError, match=r"pope has no scoring choice mcq_matching \(its choices: none\)"):
        configure_task(get_task("pope"), mcq_matching="lenient")


# -- yes/no: HallusionBench, POPE --------------------------------------------------------------------------
def test_hallusionbench(tmp_path):
    rows = [
        {
            "index": "VD_figure_0_1_0_1",
            "image": b64(png_bytes()),
            "question": "Is the line increasing?",
            "answer": "Yes",
            "category": "VD",
            "l2-category": "chart",
        },
        {
            "index": "VD_figure_0_1_0_2",
            "image": "VD_figure_0_1_0_1",
            "question": "Is the line decreasing?",
            "answer": "No",
            "category": "VD",
            "l2-category": "chart",
        },
    ]
    task = get_task("hallusionbench")
    samples = load("hallusionbench", write_tsv(tmp_path / "HallusionBench.tsv", rows), tmp_path)
    up, down = samples["VD_figure_0_1_0_1"], samples["VD_figure_0_1_0_2"]
    assert task.prompt(up) == "Is the line increasing? Please answer yes or no."
    assert (up.answer, down.answer) == ("yes", "no")
    assert (up.meta["set_id"], up.meta["figure_id"], up.meta["question_id"]) == ("1", "0", "1")
    assert up.meta["l2-category"] == "chart"
    assert_round_trip(
        task, up, right=["Yes", "yes, it is increasing."], wrong=["No", "Yes and no", "Unclear"]
    )
    assert_round_trip(task, down, right=["No.", "No, it is not."], wrong=["Yes"])


def test_pope(tmp_path):
    rows = [
        {
            "index": 1,
            "image": b64(png_bytes()),
            "question": "Is there a dog in the image?",
            "answer": "yes",
            "category": "adversarial,popular",
        },
        {
            "index": 2,
            "image": "1",
            "question": "Is there a cat in the image?",
            "answer": "no",
            "category": "random",
        },
    ]
    task = get_task("pope")
    samples = load("pope", write_tsv(tmp_path / "POPE.tsv", rows), tmp_path)
    assert task.prompt(samples["1"]) == "Is there a dog in the image? Please answer yes or no."
    assert samples["1"].meta["categories"] == ["adversarial", "popular"]
    assert_round_trip(task, samples["1"], right=["Yes"], wrong=["No"])
    assert_round_trip(task, samples["2"], right=["There is no cat."], wrong=["Yes, a cat."])


def test_yes_no_gold_that_is_neither_is_refused(tmp_path):
    rows = [{"index": 1, "image": b64(png_bytes()), "question": "q", "answer": "maybe", "category": "random"}]
    with pytest.raises(DataError, match="neither yes nor no"):
        list(get_task("pope").load(write_tsv(tmp_path / "p.tsv", rows), tmp_path / "c"))


# -- OCRBench, ChartQA -------------------------------------------------------------------------------------
def test_ocrbench(tmp_path):
    rows = [
        {
            "index": 0,
            "image": b64(png_bytes()),
            "question": "what is written in the image?",
            "answer": "['Coffee', 'COFFEE BAR']",
            "category": "Regular Text Recognition",
        },
        {
            "index": 1,
            "image": "0",
            "question": "Write the expression in LaTeX.",
            "answer": "['x^{2}']",
            "category": "Handwritten Mathematical Expression Recognition",
        },
    ]
    task = get_task("ocrbench")
    samples = load("ocrbench", write_tsv(tmp_path / "OCRBench.tsv", rows), tmp_path)
    text, formula = samples["0"], samples["1"]
    assert text.meta["answers"] == ["Coffee", "COFFEE BAR"]
    assert task.prompt(text).startswith("what is written in the image?")
    assert_round_trip(task, text, right=["coffee", "It says COFFEE bar."], wrong=["cofee", "tea"])
    assert_round_trip(task, formula, right=["x ^ {2}"], wrong=["X^{2}", "x2"])  # case kept, spaces not
    records = [{"category": s.category, "score": 1.0} for s in (text, formula)]
    metrics = task.aggregate(records)
    assert metrics["final_score"] == 2 and metrics["Text Recognition"] == 1 and metrics["accuracy"] == 1.0


def test_chartqa(tmp_path):
    rows = [
        {"index": 0, "image": b64(png_bytes()), "question": "Max?", "answer": "40", "split": "human"},
        {"index": 1, "image": "0", "question": "Colour?", "answer": "Red", "split": "augmented"},
        {"index": 2, "image": "0", "question": "Share?", "answer": "45%", "split": "augmented"},
    ]
    task = get_task("chartqa")
    samples = load("chartqa", write_tsv(tmp_path / "ChartQA_TEST.tsv", rows), tmp_path)
    assert [s.category for s in samples.values()] == ["human", "augmented", "augmented"]
    assert_round_trip(task, samples["0"], right=["40", "41.9", "38"], wrong=["42.1", "40 units", "forty"])
    assert_round_trip(task, samples["1"], right=["red", " RED "], wrong=["red."])
    assert_round_trip(task, samples["2"], right=["0.45", "46%"], wrong=["45"])


def test_ocrbench_and_chartqa_hub_parquet_layouts(tmp_path):
    """echo840/OCRBench (answer a list, category in question_type), HuggingFaceM4/ChartQA (query, label list,
    human_or_machine 0/1) and lmms-lab/ChartQA (type)."""
    ocr = write_parquet(
        tmp_path / "ocr" / "test-00000-of-00001.parquet",
        [
            {
                "dataset": "IIIT5K",
                "question": "what is written in the image?",
                "question_type": "Regular Text Recognition",
                "answer": ["Coffee", "COFFEE BAR"],
                "image": image_struct(png_bytes()),
            }
        ],
    )
    task = get_task("ocrbench")
    (text,) = load("ocrbench", ocr, tmp_path / "o").values()
    assert (text.category, text.meta["answers"]) == ("Regular Text Recognition", ["Coffee", "COFFEE BAR"])
    assert_round_trip(task, text, right=["COFFEE bar"], wrong=["tea"])
    assert task.aggregate([{"category": text.category, "score": 1.0}])["Text Recognition"] == 1

    m4 = write_parquet(
        tmp_path / "m4" / "test-00000-of-00001.parquet",
        [
            {"image": image_struct(png_bytes()), "query": "Max?", "label": ["40"], "human_or_machine": 0},
            {"image": image_struct(png_bytes()), "query": "Colour?", "label": ["Red"], "human_or_machine": 1},
        ],
    )
    task = get_task("chartqa")
    samples = load("chartqa", m4, tmp_path / "m")
    assert [(s.question, s.category) for s in samples.values()] == [
        ("Max?", "human"),
        ("Colour?", "augmented"),
    ]
    assert_round_trip(task, samples["0"], right=["41"], wrong=["43"])
    assert_round_trip(task, samples["1"], right=["red"], wrong=["blue"])
    lmms = write_parquet(
        tmp_path / "lmms" / "test-00000-of-00001.parquet",
        [{"type": "human_test", "question": "Max?", "answer": "40", "image": image_struct(png_bytes())}],
    )
    assert [s.category for s in load("chartqa", lmms, tmp_path / "l").values()] == ["human_test"]


def test_open_answer_files_without_golds_are_refused(tmp_path):
    rows = [{"index": 0, "image": b64(png_bytes()), "question": "q", "answer": "[]", "category": "x"}]
    with pytest.raises(DataError, match="no gold answer"):
        list(get_task("ocrbench").load(write_tsv(tmp_path / "o.tsv", rows), tmp_path / "c"))


# -- MathVista ---------------------------------------------------------------------------------------------
INT_HINT = "Hint: Please answer the question requiring an integer answer and provide the final value.\n"
MCQ_QUERY = (
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
    "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5"
)


def mathvista_tsv(tmp_path: Path) -> Path:
    image = b64(png_bytes())
    rows = [
        {
            "index": 1,
            "image": image,
            "question": INT_HINT + "Question: How many cubes are there?",
            "answer": "7",
            "question_type": "free_form",
            "answer_type": "integer",
            "precision": None,
            "task": "math word problem",
        },
        {
            "index": 2,
            "image": "1",
            "question": "How much money does Luca need? (Unit: $)",
            "answer": "1.45",
            "question_type": "free_form",
            "answer_type": "float",
            "precision": "2.0",
            "task": "math word problem",
        },
        {
            "index": 3,
            "image": "1",
            "question": MCQ_QUERY,
            "answer": "8/11",
            "answer_option": "B",
            "choices": str(["3/11", "8/11", "6/11", "3/5"]),
            "question_type": "multi_choice",
            "answer_type": "text",
            "task": "geometry problem solving",
        },
        {
            "index": 4,
            "image": "1",
            "question": "Between which two years is the peak?",
            "answer": "[2007, 2008]",
            "question_type": "free_form",
            "answer_type": "list",
            "task": "figure question answering",
        },
    ]
    return write_tsv(tmp_path / "MathVista_MINI.tsv", rows)


def test_mathvista_tsv(tmp_path):
    task = get_task("mathvista_mini")
    assert task.judge
    samples = load("mathvista_mini", mathvista_tsv(tmp_path), tmp_path)
    cubes, money, fraction, years = (samples[k] for k in "1234")
    assert task.prompt(cubes) == (
        INT_HINT + "Question: How many cubes are there?\n"
        "Please try to answer the question with short words or phrases if possible."
    )
    assert (cubes.category, cubes.choices) == ("math word problem", None)
    assert (fraction.answer, fraction.choices["B"], fraction.meta["answer_text"]) == ("B", "8/11", "8/11")
    assert_round_trip(
        task, cubes, right=["7", "There are 7 cubes.", "\\boxed{7}"], wrong=["8", "7.5", "seven"]
    )
    assert_round_trip(task, money, right=["1.45", "$1.45", "1.4500"], wrong=["1.4", "1.46"])
    assert_round_trip(task, fraction, right=["B", "(B) 8/11", "8/11"], wrong=["A", "3/11"])
    assert_round_trip(task, years, right=["[2007, 2008]", "[2007,2008]"], wrong=["[2008, 2009]", "2007"])


def test_mathvista_free_form_math_equivalence(tmp_path):
    pytest.importorskip("math_verify")
    task = get_task("mathvista_mini")
    from thyme.eval import EvalSample

    sample = EvalSample(id="9", question="q", answer="\\frac{\\sqrt{3}}{2}", meta={"answer_type": "text"})
    assert_round_trip(task, sample, right=["\\sqrt{3}/2", "$\\frac{\\sqrt 3}{2}$"], wrong=["\\sqrt{2}/2"])


def test_mathvista_parquet_hub_layout(tmp_path):
    root = tmp_path / "MathVista"
    record = {
        "pid": "1",
        "question": "What fraction of the shape is blue?",
        "query": MCQ_QUERY,
        "image": "images/1.jpg",
        "decoded_image": image_struct(png_bytes()),
        "choices": ["3/11", "8/11", "6/11", "3/5"],
        "unit": None,
        "precision": None,
        "answer": "8/11",
        "question_type": "multi_choice",
        "answer_type": "text",
        "metadata": {"task": "geometry problem solving", "grade": "elementary school"},
    }
    free = {
        **record,
        "pid": "2",
        "query": "Hint: integer.\nQuestion: How many?",
        "choices": None,
        "precision": None,
        "answer": "3",
        "question_type": "free_form",
        "answer_type": "integer",
    }
    write_parquet(root / "data" / "testmini-00000-of-00001.parquet", [record, free])
    write_parquet(root / "data" / "test-00000-of-00001.parquet", [{**record, "pid": "1000"}])
    task = get_task("mathvista_mini")
    samples = load("mathvista_mini", root, tmp_path)  # the task picks the testmini split
    assert sorted(samples) == ["1", "2"]
    mcq, count = samples["1"], samples["2"]
    assert task.prompt(mcq).startswith(MCQ_QUERY)  # the query column, with hint and choices
    assert (mcq.answer, mcq.category, count.choices) == ("B", "geometry problem solving", None)
    assert_round_trip(task, mcq, right=["B", "8/11"], wrong=["D"])
    assert_round_trip(task, count, right=["3"], wrong=["4"])


# -- MathVerse ---------------------------------------------------------------------------------------------
VISION_ONLY_QUESTION = (
    "According to the question shown in the image, please directly answer the question and provide the "
    "correct option letter, e.g., A, B, C, D."
)


def test_mathverse_vision_only_tsv(tmp_path):
    image = b64(png_bytes())
    meta = "{'split': 'testmini', 'source': 'GeoQA', 'subject': 'Plane Geometry', 'subfield': 'Length'}"
    rows = [
        {
            "index": 1, "image": image, "question": VISION_ONLY_QUESTION, "answer": "C",
            "question_type": "multi-choice", "problem_version": "Vision Only", "metadata": meta,
        },
        {
            "index": 2, "image": "1", "question": "Find x, as shown in the image.", "answer": "\\frac{1}{2}",
            "question_type": "free-form", "problem_version": "Vision Only",
            "metadata": meta.replace("Length", "Angle"),
        },
    ]  # fmt: skip
    task = get_task("mathverse_vision_only")
    samples = load("mathverse_vision_only", write_tsv(tmp_path / "MathVerse.tsv", rows), tmp_path)
    choice, free = samples["1"], samples["2"]
    assert task.prompt(choice) == VISION_ONLY_QUESTION  # as VLMEvalKit sends it: no wrapper
    assert (choice.category, choice.meta["subfield"], free.meta["subfield"]) == (
        "Plane Geometry", "Length", "Angle",
    )  # fmt: skip
    assert_round_trip(
        task,
        choice,
        right=["C", "(C)", "C: \\sqrt{3}", "The answer is C."],
        wrong=["B", "c", "\\sqrt{3}", "Cat"],
    )
    assert_round_trip(task, free, right=["\\frac{1}{2}", "$0.5$", "1/2"], wrong=["2", "x"])
    records = [
        {"score": 1.0, "meta": record_meta(choice.meta)},
        {"score": 0.0, "meta": record_meta(free.meta)},
    ]
    metrics = task.aggregate(records)
    assert metrics == {
        "accuracy": 0.5,
        "subject/Plane Geometry": 0.5,
        "subfield/Angle": 0.0,
        "subfield/Length": 1.0,
    }


def test_mathverse_hub_parquet_keeps_vision_only(tmp_path):
    base = {
        "problem_index": "1",
        "question": VISION_ONLY_QUESTION,
        "image": image_struct(png_bytes()),
        "answer": "B",
        "question_type": "multi-choice",
        "metadata": {
            "split": "testmini",
            "source": "GeoQA",
            "subject": "Plane Geometry",
            "subfield": "Angle",
        },
        "query_wo": VISION_ONLY_QUESTION,
        "query_cot": VISION_ONLY_QUESTION,
        "question_for_eval": "As shown ... Choices: A: 1 B: 2",
    }
    versions = ["Text Dominant", "Vision Only", "Vision Intensive"]
    rows = [{**base, "sample_index": str(i), "problem_version": v} for i, v in enumerate(versions, 1)]
    root = write_parquet(tmp_path / "MathVerse" / "testmini" / "testmini-00000-of-00001.parquet", rows)
    samples = load("mathverse_vision_only", root, tmp_path)
    assert list(samples) == ["2"] and samples["2"].category == "Plane Geometry"
    assert_round_trip(get_task("mathverse_vision_only"), samples["2"], right=["B"], wrong=["A"])


# -- the toy world -----------------------------------------------------------------------------------------
@pytest.fixture
def toy(tmp_path) -> Path:
    return write_toyworld(
        tmp_path / "toy",
        [
            {"id": "zoom-1", "task": "zoom", "question": "What colour is the small chip?", "answer": "red"},
            {
                "id": "zoom-2",
                "task": "zoom",
                "question": "Which shape is the target? A. circle B. square",
                "answer": "B",
                "choices": {"A": "circle", "B": "square"},
            },
            {
                "id": "zoom-3",
                "task": "zoom",
                "question": "Which label has a blue chip? Answer with its bounding box as [x1, y1, x2, y2].",
                "answer": "[100, 200, 140, 230]",
                "category": "box",
            },
            {"id": "compute-1", "task": "compute", "question": "What is 4821 * 367?", "answer": "1769307"},
            {"id": "compute-2", "task": "compute", "question": "What is 10 / 4?", "answer": "2.5"},
            {"id": "rotate-1", "task": "rotate", "question": "Which digits are written?", "answer": "47"},
            {"id": "contrast-1", "task": "contrast", "question": "Which word is hidden?", "answer": "Lamp"},
        ],
    )


def test_toyworld_zoom(toy, tmp_path):
    task = get_task("toyworld_zoom")
    samples = load("toyworld_zoom", toy, tmp_path)
    assert sorted(samples) == ["zoom-1", "zoom-2", "zoom-3"]
    assert task.prompt(samples["zoom-1"]) == "What colour is the small chip?"  # the question as it is
    assert_round_trip(
        task, samples["zoom-1"], right=["red", "Red.", "The answer is red"], wrong=["blue", "dark red"]
    )
    assert_round_trip(task, samples["zoom-2"], right=["B", "square"], wrong=["A", "circle"])
    assert_round_trip(
        task,
        samples["zoom-3"],
        right=["[100, 200, 140, 230]", "[102, 198, 141, 233]"],  # IoU >= 0.5
        wrong=["[140, 200, 180, 230]", "row 2, column 3"],
    )


def test_toyworld_compute_is_numeric(toy, tmp_path):
    task = get_task("toyworld_compute")
    samples = load("toyworld_compute", toy, tmp_path)
    assert_round_trip(task, samples["compute-1"], right=["1769307", "1,769,307"], wrong=["1769306", "1.77e6"])
    assert_round_trip(task, samples["compute-2"], right=["2.5", "5/2", "2.50"], wrong=["2", "3"])


def test_toyworld_rotate_and_contrast(toy, tmp_path):
    rotate, contrast = get_task("toyworld_rotate"), get_task("toyworld_contrast")
    [digits] = load("toyworld_rotate", toy, tmp_path).values()
    [word] = load("toyworld_contrast", toy, tmp_path).values()
    assert_round_trip(rotate, digits, right=["47", " 47 "], wrong=["74", "4 7"])
    assert_round_trip(contrast, word, right=["lamp", "LAMP"], wrong=["lamb"])
