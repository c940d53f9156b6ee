"""The recipe browser: list/show/copy, recipe names for --config, recipes inside a built wheel, start-up cost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from plkit.cli.recipes import list_recipes, recipe_names, recipe_path, recipes_root

from cli_helpers import run

REPO = Path(__file__).resolve().parents[2]


def test_every_recipe_file_is_listed_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(
        p.relative_to(REPO / "recipes").with_suffix("").as_posix() for p in (REPO / "recipes").rglob("*.yaml")
    )
    assert sorted(recipe_names()) == files
    code, out, _ = run(["recipes", "list"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for recipe in list_recipes():
        assert recipe.description, f"{recipe.path} needs a description after its '# Run:' line"
        assert f"  {recipe.name}  " in out
        assert recipe.description in flat, "the whole description, however long"
    by_name = {r.name: r.description for r in list_recipes()}
    assert by_name["fashion_mnist"].endswith("fashion_mnist_long reaches 93%.")
    assert "Then:" not in by_name["mnist_autoencoder"], "the description is the first paragraph only"


def test_every_recipe_starts_with_the_command_that_runs_it() -> None:
    for recipe in list_recipes():
        first = recipe.path.read_text().splitlines()[0]
        assert first.startswith("# Run: plkit "), f"{recipe.path}: first line should be '# Run: plkit ...'"


def test_show_prints_the_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["recipes", "show", "mnist"], capsys)
    assert code == 0
    assert out == (REPO / "recipes" / "mnist.yaml").read_text()
    assert yaml.safe_load(out)["model"]["class_path"] == "ImageClassifier"


def test_copy_refuses_to_overwrite_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "my.yaml"
    assert run(["recipes", "copy", "mnist", str(dest)], capsys)[0] == 0
    assert dest.read_text() == recipe_path("mnist").read_text()

    dest.write_text("# my edits\n")
    code, _, err = run(["recipes", "copy", "mnist", str(dest)], capsys)
    assert code == 2
    assert str(dest) in err
    assert "--force" in err
    assert dest.read_text() == "# my edits\n"

    assert run(["recipes", "copy", "mnist", str(dest), "--force"], capsys)[0] == 0
    assert dest.read_text() == recipe_path("mnist").read_text()


def test_copy_into_a_folder_and_to_the_default_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["recipes", "copy", "mnist", str(tmp_path)], capsys)[0] == 0
    assert (tmp_path / "mnist.yaml").is_file()
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert run(["recipes", "copy", "mnist"], capsys)[0] == 0
    assert (other / "mnist.yaml").is_file()
    assert not list(other.glob(".*.tmp")), "the temporary file of the atomic write must be gone"


@pytest.mark.parametrize("args", [["recipes", "show", "nope"], ["recipes", "copy", "nope"]])
def test_unknown_recipe_names_the_value_and_the_choices(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(args, capsys)
    assert code == 2
    assert "'nope'" in err
    assert "mnist" in err


def test_config_accepts_a_recipe_name_and_rejects_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["fit", "--config", "mnist", "--print_config"], capsys)
    assert code == 0
    assert yaml.safe_load(out)["data"]["class_path"].endswith("MNISTDataModule")

    code, _, err = run(["fit", "--config", "mnst"], capsys)
    assert code == 2
    assert err == (
        "plkit fit: error: --config mnst: no such file, and no recipe has that name; did you mean 'mnist'? "
        "(`plkit recipes list`)\n"
    )


def _fresh_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.integration  # fresh interpreters, to see what they import
@pytest.mark.parametrize("args", [["--help"], ["recipes", "list"], ["recipes", "show", "mnist"]])
def test_light_commands_import_no_torch_and_answer_fast(args: list[str], tmp_path: Path) -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from plkit.cli import main; "
        f"main({args!r}); took = time.perf_counter() - t; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'jsonargparse')); "
        "print('HEAVY', heavy); print('TOOK', took)"
    )
    proc = _fresh_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    # The whole process, interpreter start-up included.
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "plkit", *args], cwd=tmp_path, capture_output=True, check=False)
    assert proc.returncode == 0
    assert time.perf_counter() - start < 0.5


@pytest.mark.integration  # builds a wheel and runs the installed plkit
def test_recipes_are_found_inside_a_built_wheel(tmp_path: Path, mnist_dir: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("plkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in (REPO / "recipes").rglob("*.yaml"):
        assert f"plkit/recipes/{recipe.relative_to(REPO / 'recipes').as_posix()}" in names
    assert not any(n.startswith("recipes/") for n in names), "recipes must live inside the package, not top-level"

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import plkit, sys; from plkit.cli.recipes import recipes_root; from plkit.cli import main; "
        "print('FILE', plkit.__file__); print('ROOT', recipes_root()); main(['recipes', 'copy', 'mnist', 'my.yaml'])"
    )
    proc = _fresh_python(code, elsewhere, env)
    assert proc.returncode == 0, proc.stderr
    assert f"FILE {site}" in proc.stdout
    assert f"ROOT {site / 'plkit' / 'recipes'}" in proc.stdout
    assert (elsewhere / "my.yaml").read_text() == (REPO / "recipes" / "mnist.yaml").read_text()

    # The README's "start your own" pair, run by the installed wheel: copy, then fit the copy.
    fit = [sys.executable, "-m", "plkit", "fit", "--config", "my.yaml", "--trainer.fast_dev_run", "true"]
    fit += ["--data.data_dir", str(mnist_dir), "--data.val_size", "64", "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(fit, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in proc.stdout  # `plkit` keeps stderr for problems


def test_checkout_finds_the_top_level_recipes_folder() -> None:
    assert recipes_root() == REPO / "recipes"
