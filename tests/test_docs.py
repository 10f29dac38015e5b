"""The docs site builds with --strict, and every Python block of the README and docs/ runs (extracted from the
files here, never copied). A block preceded by `<!-- no-test: reason -->` is skipped, visibly, for that reason."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.*?)\s*-->\s*\n$")


def python_blocks(path):
    """(code, skip reason or None) for every ```python block of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()]
        marker = NO_TEST.search(before[before.rfind("\n", 0, len(before) - 1) + 1:]) if before.endswith("\n") else None
        blocks.append((match.group(1), marker.group(1) if marker else None))
    return blocks


PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] if python_blocks(p)]


def test_the_readme_and_the_docs_have_runnable_blocks_and_every_skip_says_why():
    assert len(python_blocks(ROOT / "README.md")) >= 2  # the PEFT + Trainer and the plain-library quick starts
    skipped = [(p.name, reason) for p in PAGES for _, reason in python_blocks(p) if reason is not None]
    assert all(reason for _, reason in skipped) and len(skipped) <= 2, skipped


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    monkeypatch.chdir(tmp_path)  # files a block writes land here
    namespace = {"__name__": f"docs_{page.stem}"}  # one page is one session: a block may use the ones above it
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):  # the Trainer seeds the global RNGs; leave them as they were
        for number, (code, reason) in enumerate(python_blocks(page), 1):
            if reason is None:
                exec(compile(code, f"{page.relative_to(ROOT)}:block{number}", "exec", dont_inherit=True), namespace)
    random.setstate(state)


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=str(ROOT),
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "attach_adapter" in api and "SparseAdapterCallback" in api and "prune_peft_model" in api
    included = (site / "peft-trainer" / "index.html").read_text(encoding="utf-8")
    assert "SparseAdapterCallback" in included and "--8&lt;--" not in included  # the example's lines, included
    assert (site / "results" / "zero-init" / "index.html").is_file()
