"""Tests for routelab.compute: the pinned compute path gives the same numbers whatever the CPU.

Each test runs tests/compute_probe.py (a few steps of the testbed trainer, the scorer on the
result, numpy and Arrow float kernels) in fresh processes under different settings and compares
the hashes it prints. The emulated-CPU tests (marker ``emulation``, run by .ci/run) run the
probe under qemu-user as an Intel CPU without AVX-512 (Haswell) and as an AMD one (EPYC): the
machines a clean clone is checked on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from routelab import compute

PROBE = Path(__file__).with_name("compute_probe.py")
# Everything the pin sets, plus its own switches: removed from the environment a probe inherits,
# so that each test states the settings it runs under.
CONTROLLED = (*compute.PINNED, *compute.THREAD_VARIABLES, "ROUTELAB_COMPUTE", "ROUTELAB_THREADS")


def run_probe(env: dict[str, str], emulate: str | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    cmd = [sys.executable, str(PROBE)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64") or "qemu-x86_64", "-cpu", emulate, *cmd]
    done = subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


NUMBERS = ("train", "score", "numpy", "arrow")


@pytest.fixture(scope="module")
def pinned() -> dict[str, str]:
    return run_probe({})


def test_without_the_pin_the_kernels_change_the_trained_weights():
    """The failure the pin exists for: two ATen kernel sets (same machine, same seed) train different weights."""
    native = {"ROUTELAB_COMPUTE": "native", "MKL_CBWR": "COMPATIBLE"}
    a = run_probe({**native, "ATEN_CPU_CAPABILITY": "default"})
    b = run_probe({**native, "ATEN_CPU_CAPABILITY": "avx2"})
    assert (a["capability"], b["capability"]) == ("DEFAULT", "AVX2")
    assert a["train"] != b["train"] and a["score"] != b["score"]
    # and MKL's branches alone, ATen fixed: GEMM and vector math differ too
    c = run_probe({"ROUTELAB_COMPUTE": "native", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"})
    assert c["train"] != b["train"]


def test_the_pin_overrides_whatever_the_environment_inherits(pinned):
    inherited = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "NPY_DISABLE_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Prescott", "ARROW_USER_SIMD_LEVEL": "NONE",
                 "OMP_NUM_THREADS": "1"}  # fmt: skip
    other = run_probe(inherited)
    assert pinned["capability"] == "AVX2" == other["capability"]
    assert {k: other[k] for k in NUMBERS} == {k: pinned[k] for k in NUMBERS}


def _cpu_has_avx512() -> bool:
    """From the CPU itself: this (pinned) process's torch reports the pinned AVX2, not the hardware."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and " avx512f" in cpuinfo.read_text()


@pytest.mark.skipif(not _cpu_has_avx512(), reason="compares the pin with this CPU's own AVX-512 kernels")
def test_on_an_avx512_cpu_the_pin_is_the_avx2_path_and_native_differs(pinned):
    """On this machine's own AVX-512 kernels the numbers differ; the pin equals forcing the AVX2 ones by hand."""
    native = run_probe({"ROUTELAB_COMPUTE": "native"})
    assert native["capability"] == "AVX512" and native["train"] != pinned["train"]
    by_hand = run_probe({"ROUTELAB_COMPUTE": "native", **compute.PINNED})
    assert {k: by_hand[k] for k in NUMBERS} == {k: pinned[k] for k in NUMBERS}


def test_a_thread_override_is_named_and_recorded():
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    code = "import routelab.compute as c; print(c.label()); print(c.override_note())"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ROUTELAB_THREADS": "3"}, capture_output=True,
                         text=True, check=True).stdout.splitlines()  # fmt: skip
    assert out[0] == "cpu-avx2-mkl-compatible-3t" and "ROUTELAB_THREADS=3" in out[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "cpu-avx2-mkl-compatible-2t" and out.splitlines()[1:] == [""]  # pinned: no note


def test_a_misspelt_compute_mode_stops_at_import():
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    done = subprocess.run([sys.executable, "-c", "import routelab"], env={**env, "ROUTELAB_COMPUTE": "pined"},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and "ROUTELAB_COMPUTE='pined' is not one of pinned, native" in done.stderr


@pytest.mark.emulation
@pytest.mark.parametrize("cpu", ["Haswell", "EPYC"])
def test_an_emulated_avx2_cpu_gives_the_pinned_numbers(pinned, cpu):
    """qemu-user as Intel Haswell (AVX2, no AVX-512) and AMD EPYC (AVX2, another vendor: MKL
    dispatches by vendor): the pinned probe prints the same hashes as on this machine."""
    if shutil.which("qemu-x86_64") is None:
        pytest.fail("qemu-x86_64 not found: install qemu-user (Debian/Ubuntu: apt-get install qemu-user)")
    emulated = run_probe({}, emulate=cpu)
    assert emulated["capability"] == "AVX2"
    assert {k: emulated[k] for k in NUMBERS} == {k: pinned[k] for k in NUMBERS}
