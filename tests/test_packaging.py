"""The package people install: the wheel holds the library only, installs into a fresh venv and imports;
`import sparse_adapter` loads neither transformers nor the experiment app's frameworks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("transformers", "lightning", "hydra", "omegaconf", "peft", "datasets", "wandb", "trl", "bitsandbytes")


def test_import_loads_no_framework_and_every_public_name_is_there_or_lazy():
    code = ("import sys, sparse_adapter\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            "names = set(vars(sparse_adapter)) | set(sparse_adapter._LAZY)\n"
            "print([n for n in sparse_adapter.__all__ if n not in names])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(ROOT))
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout


def test_wheel_installs_into_a_fresh_venv_with_the_library_only(tmp_path):
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ and egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "sparse_adapter", source / "sparse_adapter", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, cwd=str(tmp_path))
    (wheel,) = wheels.glob("sparse_adapter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"sparse_adapter", wheel.name.split("-py")[0] + ".dist-info"}
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if re.match(r"Requires-Dist: torch(?![\w-])", line)]
    assert requires == ["Requires-Dist: torch>=2.4"]  # lower-bounded: installs beside anyone's torch (CPU or CUDA)
    extras = {line.split(": ")[1] for line in metadata.splitlines() if line.startswith("Provides-Extra")}
    assert {"peft", "quant", "dist", "eval", "docs", "dev"} <= extras
    assert "License-Expression: MIT" in metadata.splitlines()  # SPDX (PEP 639), with its text in the wheel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-build-isolation", "--no-index",
                    str(wheel)], check=True, capture_output=True, cwd=str(tmp_path))
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    top = {p.name for p in site.iterdir()}
    assert "sparse_adapter" in top and not top & {"tasks", "callbacks", "conf", "train.py"}, sorted(top)
    # torch and transformers come from this environment (appended after the venv's own site-packages)
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = ("import importlib.util, sparse_adapter; from sparse_adapter import AdapterConfig, prune; "
            "print(sparse_adapter.__file__); "
            "print(importlib.util.find_spec('tasks'), importlib.util.find_spec('callbacks'))")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not shadow the wheel
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True, cwd=str(tmp_path),
                         env=clean)
    where, app = out.stdout.splitlines()
    assert Path(where).is_relative_to(site) and app == "None None"
