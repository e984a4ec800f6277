import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tiny_models, remote_code/deepseek_moe

ROOT = HERE.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.fail(f"{SHARED} missing: tests read the real benchmark files from ../shared beside the project")
    return SHARED
