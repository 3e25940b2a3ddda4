"""The wheel holds what a non-editable install needs: the bundled prompts, the licence, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_and_reads_its_prompts(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # No build isolation: the venv's setuptools builds it, so the test needs no network.
    # Built from a copy, so that setuptools' build/ folder never lands in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "sdelm", source / "sdelm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)]
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("sdelm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sdelm/data/prompts.json" in names
    assert any(name.endswith("licenses/LICENSE") for name in names)
    # A fresh venv with the wheel installed; torch and the rest come from this venv's site
    # folder, added by a .pth line after its own (this venv's editable hook is not read).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
                   check=True)  # fmt: skip
    python = tmp_path / "venv" / "bin" / "python"
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())  # fmt: skip
    install = [*pip, "install", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    ours = Path(sysconfig_purelib())
    (site / "zz-dependencies.pth").write_text(f"{ours}\n")
    code = "import sdelm; print(sdelm.__file__); print(len(sdelm.corpus.prompts()))"
    result = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    where, count = result.stdout.split()
    assert Path(where).is_relative_to(site) and int(count) > 0
    helped = subprocess.run(
        [python, str(site / "bin" / "sdelm"), "--help"], capture_output=True, text=True,
        check=True, cwd=tmp_path,
    )  # fmt: skip
    assert "robustness" in helped.stdout


def sysconfig_purelib() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]
