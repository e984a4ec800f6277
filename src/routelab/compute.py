"""The pinned compute path: the same float results on every x86-64 CPU with AVX2.

Trained weights, routing logs and every score depend on which CPU kernels the libraries
dispatch to, even with deterministic algorithms and fixed threads: ATen picks AVX-512 or AVX2
kernels by CPU (sums of different widths), MKL picks its GEMM and vector-math code by CPU
*and vendor*, numpy, OpenBLAS and Arrow dispatch by CPU too. ``import routelab`` calls
:func:`pin` before anything imports torch, so every stage, the ``routelab`` command and the
bench scripts run one compute path:

| variable                 | pinned value | why |
|--------------------------|--------------|-----|
| ATEN_CPU_CAPABILITY      | avx2         | ATen's vectorised kernels (every x86-64 CPU of the last decade has AVX2) |
| MKL_CBWR                 | COMPATIBLE   | MKL's CNR branch that gives the same results on Intel and AMD (its AVX2 branch falls back to the native one on AMD) |
| MKL_DYNAMIC, OMP_DYNAMIC | FALSE        | MKL's reproducibility conditions: a fixed thread count |
| OMP/MKL/OPENBLAS_NUM_THREADS | ROUTELAB_THREADS (2) | float sums depend on how work is split over threads |
| ONEDNN_MAX_CPU_ISA       | AVX2         | oneDNN (bf16 matmul) would use AVX-512/AMX where present |
| NPY_DISABLE_CPU_FEATURES | X86_V4 AVX512_ICL AVX512_SPR | numpy's AVX-512 loops (exp/log, sorting) |
| OPENBLAS_CORETYPE        | Haswell      | numpy/scipy's OpenBLAS kernels (the AVX2 ones) |
| ARROW_USER_SIMD_LEVEL    | AVX2         | Arrow compute kernels |
| CUBLAS_WORKSPACE_CONFIG  | :4096:8      | deterministic cuBLAS on GPU (with torch's deterministic algorithms, see :func:`configure_torch`) |

One more part of the path is code, not an environment variable: the testbed trainers use
torch's fused Adam(W), whose square root is ATen's (an IEEE instruction) rather than MKL's
vector-math sqrt, the one MKL function whose result was seen to differ between an Intel CPU
and an emulated AMD one even on the COMPATIBLE branch.

Override (for speed, or to study the effect): ``ROUTELAB_COMPUTE=native`` leaves every
variable as the environment has it (the libraries' own dispatch), ``ROUTELAB_THREADS=N`` sets
another thread count. Either is an override: stage summary lines name it and every stage's
metrics record :func:`label`, so results made off the pinned path are never mistaken for it.
The machine's CPU model is never recorded (it differs between machines; the settings do not).

Not part of the path: OMP_WAIT_POLICY (changes no result). PASSIVE helps only when other jobs
share the CPU and costs 1.4× (training) to 2.2× (scoring) on a quiet one (bench/compute_pin.py's
workers, measured): set it yourself on a shared machine.

Import order matters only in a notebook that imports torch before routelab: :func:`pin` then
sets the variables and :func:`check` warns if torch already committed to other kernels.
"""

from __future__ import annotations

import os
import sys
import warnings

DEFAULT_THREADS = 2
# The settings that make the path; threads are added by pin() (ROUTELAB_THREADS).
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Haswell",
    "ARROW_USER_SIMD_LEVEL": "AVX2",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
MODES = ("pinned", "native")


def mode() -> str:
    """``pinned`` (default) or ``native`` (ROUTELAB_COMPUTE)."""
    value = os.environ.get("ROUTELAB_COMPUTE", "pinned").strip().lower() or "pinned"
    if value not in MODES:
        # A typo must not silently run off the pinned path: fail at import, in one line.
        sys.exit(f"routelab: ROUTELAB_COMPUTE={value!r} is not one of {', '.join(MODES)} (unset it for the pinned path)")
    return value


def threads() -> int:
    """The CPU thread count of every torch, MKL and OpenBLAS call (ROUTELAB_THREADS, default 2)."""
    raw = os.environ.get("ROUTELAB_THREADS", "").strip()
    if not raw:
        return DEFAULT_THREADS
    if not raw.isdigit() or int(raw) < 1:
        sys.exit(f"routelab: ROUTELAB_THREADS={raw!r} must be a whole number >= 1 (unset it for {DEFAULT_THREADS})")
    return int(raw)


def pin() -> None:
    """Set the pinned path's variables (overriding inherited ones) unless ROUTELAB_COMPUTE=native.

    Threads are set in both modes: the count is part of the path (see the module docstring).
    """
    n = str(threads())
    if mode() == "pinned":
        os.environ.update(PINNED)
    for var in THREAD_VARIABLES:
        os.environ[var] = n


def overrides() -> list[str]:
    """How this process departs from the pinned path (empty on it): e.g. ``["ROUTELAB_COMPUTE=native"]``."""
    out = []
    if mode() != "pinned":
        out.append(f"ROUTELAB_COMPUTE={mode()}")
    if threads() != DEFAULT_THREADS:
        out.append(f"ROUTELAB_THREADS={threads()}")
    return out


def label() -> str:
    """The compute path in one short string, recorded in every stage's metrics.

    ``cpu-avx2-mkl-compatible-2t`` on the pinned path; the override otherwise
    (``native-4t``). Never the CPU model: that would differ between machines.
    """
    t = f"{threads()}t"
    return f"cpu-avx2-mkl-compatible-{t}" if mode() == "pinned" else f"native-{t}"


def override_note() -> str:
    """The clause a summary line ends with when the path is overridden ("" on the pinned path)."""
    found = overrides()
    return f"; compute override {' '.join(found)}: not the pinned path, results may differ from the committed ones" if found else ""


def check() -> None:
    """Warn when torch runs other kernels than the pin asks for (torch imported and used before
    routelab in the same process). Call after importing torch."""
    if mode() != "pinned" or "torch" not in sys.modules:
        return
    import torch

    found = torch.backends.cpu.get_cpu_capability()
    if found.lower() != PINNED["ATEN_CPU_CAPABILITY"]:
        warnings.warn(
            f"routelab: torch runs {found} kernels, not the pinned {PINNED['ATEN_CPU_CAPABILITY']}: import routelab "
            "before torch (results will differ from the committed ones)", stacklevel=2)  # fmt: skip


def configure_torch(device: str) -> None:
    """Threads and deterministic kernels for a process about to run a model on ``device``.

    CPU: the pinned thread count. CUDA: torch's deterministic algorithms (warn-only: an op
    without a deterministic CUDA kernel warns instead of stopping a long run), no TF32, no
    cuDNN autotuning; CUBLAS_WORKSPACE_CONFIG is set by :func:`pin`. Results on GPU repeat
    on the same GPU model and software stack only.
    """
    import torch

    torch.set_num_threads(threads())
    if str(device).startswith("cuda"):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
