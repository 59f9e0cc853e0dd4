"""benchmarks/report.py: the ratios quoted in closing notes come from it."""
import importlib.util
import os

import pytest

_path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "report.py")
if not os.path.exists(_path):  # tests run from an installed wheel without the repo
    pytest.skip("benchmarks/ not present", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("bench_report", _path)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _row(group, backend, median, **extra):
    return {"group": group, "name": f"{group}[{backend}]", "stats": {"median": median},
            "extra_info": {"backend": backend, **extra}}


def test_ratios_against_reference_peer_and_bandwidth():
    rows = [_row("memory bandwidth", "numpy", 0.2, bytes_moved=2e9),   # 10 GB/s
            _row("memory bandwidth", "torch", 0.1, bytes_moved=2e9),   # 20 GB/s: the best
            _row("losses.x", "numpy", 0.040, input_bytes=2e8),
            _row("losses.x", "numba", 0.010, input_bytes=2e8),
            _row("losses.x", "torch", 0.020)]
    assert report.bandwidth(rows) == pytest.approx(2e10)
    lines = report.table(rows).splitlines()
    assert lines[0] == "copy bandwidth: 20.0 GB/s"
    numba = next(line.split() for line in lines if " numba " in line)
    # 10 ms; 4x the reference; 2x torch; 2e8 bytes at 20 GB/s is 10 ms to read: ratio 1
    assert numba[1:] == ["numba", "10.000", "4.00", "2.00", "1.00"]
    assert not any("memory bandwidth" in line for line in lines[1:])


def test_group_filter():
    rows = [_row("losses.a", "numpy", 1.0), _row("layers.b", "numpy", 1.0)]
    text = report.table(rows, groups=["losses"])
    assert "losses.a" in text and "layers.b" not in text


_ispec = importlib.util.spec_from_file_location(
    "bench_interleaved", os.path.join(os.path.dirname(_path), "interleaved.py"))
interleaved = importlib.util.module_from_spec(_ispec)
_ispec.loader.exec_module(interleaved)


def test_interleaved_summary_ratio():
    line = interleaved.summary("gelu", {"numba": 0.003, "cython": 0.006, "torch": 0.0045})
    # best median 3 ms (numba), torch 4.5 ms: 1.5x
    assert line.split() == ["gelu", "numba", "3.000", "cython", "6.000", "torch", "4.500",
                            "best", "/", "torch:", "1.50x"]
