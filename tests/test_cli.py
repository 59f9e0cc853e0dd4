"""``python -m fastml info | demo | bench`` and the demo's training loop."""
import os
import subprocess
import sys

import pytest

import fastml
from fastml import _demo
from fastml.__main__ import format_table, main

SRC = os.path.dirname(os.path.dirname(fastml.__file__))


def _cli(*args, timeout=180):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTML_STRICT", None)  # the command line runs as users run it
    proc = subprocess.run([sys.executable, "-m", "fastml", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_info_lists_every_backend_and_op():
    out = _cli("info", timeout=120)
    info = fastml.backend_info()
    for name in info["backends"]:
        assert name in out
    for op in info["ops"]:
        assert op in out
    assert "native ops" in out


def test_demo_numpy_prints_table():
    out = _cli("demo", "--backends", "numpy", "--epochs", "2")
    assert "test accuracy" in out and "speed-up vs numpy" in out
    row = next(line for line in out.splitlines() if line.startswith("numpy "))
    assert float(row.split()[1]) > 0.5


def test_bench_quick_runs(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    out = _cli("bench", "--quick", "--backends", "numpy", "--plot", str(png))
    for op in ("relu", "softmax", "cross_entropy+grad", "linear", "adam_step"):
        assert op in out
    assert png.stat().st_size > 0


def test_demo_reaches_accuracy_on_every_cpu_backend():
    data = _demo.load_data()
    ref = _demo.train("numpy", data, epochs=20, seed=0)
    assert ref["accuracy"] >= 0.95
    ops = fastml.backend_info()["ops"]
    for b in fastml.available_backends():
        if b in ("numpy", "cuda") or any(ops[q][b] != "native" for q in _demo.TRAINING_OPS):
            continue  # FASTML_STRICT: only fully native backends run here
        res = _demo.train(b, data, epochs=20, seed=0)
        assert res["accuracy"] >= 0.95, b
        assert abs(res["accuracy"] - ref["accuracy"]) <= 0.01, b


def test_demo_cnn_reaches_accuracy_on_every_cpu_backend():
    data = _demo.load_data()
    ref = _demo.train("numpy", data, epochs=20, seed=0, model="cnn")
    assert ref["accuracy"] >= 0.97
    ops = fastml.backend_info()["ops"]
    for b in fastml.available_backends():
        if b in ("numpy", "cuda") or any(ops[q][b] != "native" for q in _demo.MODEL_OPS["cnn"]):
            continue  # FASTML_STRICT: only fully native backends run here
        res = _demo.train(b, data, epochs=20, seed=0, model="cnn")
        assert res["accuracy"] >= 0.97, b
        assert abs(res["accuracy"] - ref["accuracy"]) <= 0.01, b


def test_demo_cnn_command():
    out = _cli("demo", "--model", "cnn", "--backends", "numpy", "--epochs", "1")
    assert "CNN" in out and f"/{len(_demo.MODEL_OPS['cnn'])}" in out


def test_demo_is_reproducible_from_seed():
    data = _demo.load_data()
    a = _demo.train("numpy", data, epochs=1, seed=3)
    b = _demo.train("numpy", data, epochs=1, seed=3)
    assert a["final_loss"] == b["final_loss"] and a["accuracy"] == b["accuracy"]


def test_demo_without_tqdm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(SystemExit, match=r"pip install 'fastml\[demo\]'"):
        main(["demo", "--backends", "numpy", "--epochs", "1"])


def test_unknown_or_unavailable_backend_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown fastml backend 'nope'"):
        main(["demo", "--backends", "nope"])
    missing = [n for n, b in fastml.backend_info()["backends"].items() if not b["available"]]
    if missing:
        with pytest.raises(SystemExit, match="not available"):
            main(["bench", "--backends", missing[0]])


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--epochs", "0"])
    assert exc.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])


def test_format_table():
    text = format_table(["a", "bb"], [[1, "x"], ["long", 2.5]])
    lines = text.splitlines()
    assert lines[0] == "a     bb" and lines[1] == "----  ---" and lines[3] == "long  2.5"
    assert all(len(line) <= 9 for line in lines)
