"""The session contract (DESIGN.md): out-of-process execution, persistence, presets, errors, caps."""

from __future__ import annotations

import os
import pathlib
import threading

import pytest

from thyme.sandbox import ExecutionResult, SessionBusy


def test_runs_out_of_process(session):
    result = session.run("import os\nprint(os.getpid())")
    assert isinstance(result, ExecutionResult)
    assert result.ok and result.error is None and not result.timed_out
    assert int(result.stdout) != os.getpid()
    assert result.duration_s > 0


def test_caller_state_is_untouched(session):
    marker = "THYME_CALLER_MARKER"
    session.run(f"import sys\nsys.modules['os'].environ['{marker}'] = '1'\nglobals()['injected'] = 1")
    assert marker not in os.environ
    assert "injected" not in globals()


def test_variables_persist_and_functions_see_top_level_names(session):
    assert session.run("y = 3\ndef f():\n    return y * 2").ok
    assert session.run("print(f())").stdout == "6\n"
    session.run("y = 10")
    assert session.run("print(f())").stdout == "20\n"


def test_imports_persist_across_blocks(session):
    session.run("import numpy as np")
    assert session.run("print(np.arange(4).sum())").stdout.strip() == "6"


def test_sessions_never_share_state(sandbox, scene_jpeg):
    with sandbox.session(inputs=[scene_jpeg]) as a, sandbox.session(inputs=[scene_jpeg]) as b:
        a.run("secret = 42")
        result = b.run("print(secret)")
        assert "NameError" in result.error
        assert a.run("print(secret)").stdout == "42\n"
        assert a.output_dir != b.output_dir


def test_presets(session, scene_jpeg):
    result = session.run("print(image_path)\nprint(image_paths)\nprint(output_dir)")
    lines = result.stdout.splitlines()
    # image_path is the input as the worker sees it: the caller's file, or a read-only copy of it when the
    # worker runs under its own uid; either way the same bytes.
    assert lines[0] == session.inputs[0]
    assert pathlib.Path(lines[0]).read_bytes() == scene_jpeg.read_bytes()
    assert lines[1] == repr([session.inputs[0]])
    assert lines[2] == str(session.output_dir)


def test_multiple_inputs(sandbox, scene_jpeg, small_png):
    with sandbox.session(inputs=[scene_jpeg, small_png]) as s:
        result = s.run("from PIL import Image\nprint([Image.open(p).size for p in image_paths])")
        assert result.stdout.strip() == "[(2000, 1500), (320, 240)]"


def test_no_inputs(sandbox):
    with sandbox.session() as s:
        assert s.run("print(image_path, image_paths)").stdout == "None []\n"


def test_missing_input_is_a_clear_error(sandbox, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a readable file"):
        sandbox.session(inputs=[tmp_path / "nope.jpg"])


def test_error_is_a_traceback_of_the_models_code(session):
    result = session.run("a = 1\nb = undefined_name + a")
    assert not result.ok
    assert "NameError" in result.error and "undefined_name" in result.error
    assert "line 2" in result.error and "b = undefined_name + a" in result.error
    assert "thyme" not in result.error  # no frames of the worker itself


def test_a_traceback_quotes_the_code_the_model_wrote_not_its_repair(session):
    code = (
        "from PIL import Image\nim = Image.open(image_path)\n"
        "def zoom(box):\n    return cv.resize(im.crop(box), None)\n"  # repaired twice (cv_alias, crop_clamp)
        "small = im.crop((0, 0, 200, 200)).resize((0, -1))\n"  # a repaired line (crop_clamp) that fails
    )
    result = session.run(code)
    assert not result.ok
    assert "line 5" in result.error and "small = im.crop((0, 0, 200, 200)).resize((0, -1))" in result.error
    assert "__thyme" not in result.error and "^" not in result.error  # no carets under another line's columns
    result = session.run("import cv2\nzoom((0, 0, 10, 10))")
    assert not result.ok and "return cv.resize(im.crop(box), None)" in result.error, result.error
    assert "__thyme" not in result.error and "cv2.resize" not in result.error
    result = session.run("x = 1\ny = undefined_name + x")  # an unrepaired line keeps Python's own carets
    assert "y = undefined_name + x" in result.error and "^" in result.error


def test_syntax_error_is_reported(session):
    result = session.run("def broken(:\n    pass")
    assert result.error is not None and "SyntaxError" in result.error


def test_stdout_before_error_is_kept(session):
    result = session.run("print('partial')\nraise ValueError('boom')")
    assert result.stdout == "partial\n"
    assert "ValueError: boom" in result.error
    assert "partial" in result.text and "boom" in result.text


def test_system_exit(session):
    assert session.run("import sys\nprint('x')\nsys.exit(0)").ok
    assert "SystemExit: 3" in session.run("import sys\nsys.exit(3)").error
    assert session.run("print('still here')").stdout == "still here\n"


def test_stdout_is_capped(sandbox, scene_jpeg):
    cap = sandbox.config.max_stdout_chars
    with sandbox.session(inputs=[scene_jpeg]) as s:
        result = s.run(f"print('x' * {cap * 4})")
        assert result.truncated and len(result.stdout) == cap


def test_stderr_is_separate(session):
    result = session.run("import sys\nprint('out')\nprint('warn', file=sys.stderr)")
    assert result.stdout == "out\n" and result.stderr == "warn\n"


def test_printed_floats_are_not_rewritten(session):
    result = session.run("print(1/3)\nprint(2.50)\nprint(f'{0.1 + 0.2}')")
    assert result.stdout.splitlines() == [repr(1 / 3), "2.5", repr(0.1 + 0.2)]


def test_non_string_code_is_a_type_error(session):
    with pytest.raises(TypeError, match="as str"):
        session.run(b"print(1)")  # type: ignore[arg-type]


def test_concurrent_calls_on_one_session_are_refused(session):
    errors = []
    started = threading.Event()

    def slow():
        started.set()
        session.run("import time\ntime.sleep(0.5)")

    t = threading.Thread(target=slow)
    t.start()
    started.wait()
    import time

    time.sleep(0.1)
    try:
        session.run("print(1)")
    except SessionBusy as exc:
        errors.append(exc)
    t.join()
    assert errors and "one session per trajectory" in str(errors[0])


def test_closed_session_refuses_and_cleans_up(sandbox, scene_jpeg):
    s = sandbox.session(inputs=[scene_jpeg])
    s.run("open('note.png', 'wb').write(b'x')")
    out = pathlib.Path(s.output_dir)
    assert out.exists()
    s.close()
    assert not s.home.exists()  # outputs, staged inputs
    assert s.images_dir.exists()  # returned images stay readable until the Sandbox closes
    s.discard_images()
    assert not s.images_dir.exists()
    with pytest.raises(RuntimeError, match="closed"):
        s.run("print(1)")
    s.close()  # idempotent


def test_zygote_environment_has_no_caller_secrets(monkeypatch, scene_jpeg):
    from thyme.sandbox import Sandbox, SandboxConfig

    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-never-leak")
    with Sandbox(SandboxConfig(pool_size=0)) as sb, sb.session(inputs=[scene_jpeg]) as s:
        result = s.run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('OPENAI_API_KEY'))")
    assert "OPENAI_API_KEY" not in result.stdout.splitlines()[0]
    assert result.stdout.splitlines()[1] == "None"


def test_inherited_descriptors_are_closed(session, tmp_path):
    leaked = open(tmp_path / "caller-file.txt", "w")  # noqa: SIM115
    try:
        probe = (
            "import os\nopen_fds = []\nfor fd in range(1024):\n    try:\n        os.fstat(fd)\n"
            "        open_fds.append(fd)\n    except OSError:\n        pass\nprint(open_fds)"
        )
        result = session.run(probe)
        fds = [int(x) for x in result.stdout.strip(" []\n").split(",")]
        assert fds[:3] == [0, 1, 2] and len(fds) == 4  # /dev/null as stdio, and the channel
        stdin = session.run("import sys\nprint(repr(sys.stdin.read()))")
        assert stdin.stdout.strip() == "''"
    finally:
        leaked.close()
