import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "transformers", "peft", "safetensors", "numpy")


def test_api_and_registry_do_not_import_torch():
    code = (
        "import json, sys\n"
        "import api.main, api.routes, mftd.registry, mftd.modelinfo, mftd.datasets, mftd.token\n"
        f"print(json.dumps(sorted(name for name in sys.modules if name.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
