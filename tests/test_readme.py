"""The README stays true: every registered architecture and alias is in its zoo table."""
from __future__ import annotations

import re
from pathlib import Path

import kdzoo
from kdzoo.registry import is_detector

README = Path(__file__).resolve().parents[1] / "README.md"


def test_zoo_table_lists_every_registered_architecture() -> None:
    text = README.read_text()
    table = text[text.index("| family | architectures |"):]
    table = table[: table.index("\n\n")]
    listed = set(re.findall(r"`([a-z0-9_]+)`", table))
    missing = sorted(set(kdzoo.list_detectors()) - listed)
    assert not missing, f"README's zoo table does not list {missing}"
    unknown = sorted(n for n in listed if not is_detector(n) and n not in kdzoo.registry.list_aliases())
    assert not unknown, f"README's zoo table lists unregistered names {unknown}"


# Examples that need the network (weights from the Hub, MMDetection's or CrossKD's servers) or minutes of
# training are not run here; every other example is run as written.
NETWORK = ("pretrained=True", "hf-hub:", "push_to_hub", 'torch.hub.load("org')
SHELL_RUN = ("kdzoo predict", "kdzoo export")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_python_examples_run() -> None:
    ran = 0
    for block in _blocks("python"):
        if any(marker in block for marker in NETWORK):
            continue
        exec(compile(block, "README.md", "exec"), {})
        ran += 1
    assert ran >= 1


def test_shell_examples_run(tmp_path) -> None:
    import shlex
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, name in (("images", "a.png"), ("images", "b.png"), ("more", "c.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / folder / name)
    commands = [line.split("  #")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    commands = [c for c in commands if c.startswith(SHELL_RUN)]
    assert any(c.startswith("kdzoo predict") for c in commands)
    for command in commands:
        argv = [sys.executable, "-m", "kdzoo"] + shlex.split(command)[1:]  # the `kdzoo` console script
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, f"README example failed: {command}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "predictions" / "results.json").is_file()


def test_relative_links_and_images_resolve() -> None:
    """Every relative link or image in README.md and docs/*.md names a file that exists (plots included)."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s#]+)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.name}: {target}")
    assert len(pages) > 5 and not missing, missing
