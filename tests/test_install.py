"""A plain install runs every command: the wheel, in a fresh venv, with only the ``cpu`` extra.

Fast checks read the source: every third-party import of the packages (lazy ones inside
functions included) is declared in ``[project].dependencies`` or in a runtime extra, an extra's
import happens only where it is needed, and the wheel lists every package.

The slow checks build timevis's wheel, create a fresh venv (no dev extra, not editable), install
into it the torch build this environment runs (pip's cache and find-links make that quick) and
the wheel with ``[cpu]``, record a tiny run through the callback there (synthetic 8x8 images:
no scikit-learn in a plain install), and run every command (README's four, and any other that
``timevis --help`` lists) from a folder outside the checkout, so the checkout cannot shadow the
installed package; the presets must come from the installed package. Then: each optional feature
without its extra fails with one line naming the extra, and with FAISS uninstalled ``fit`` and
``eval`` still work (exact kNN in torch). Everything runs on the CPU (``CUDA_VISIBLE_DEVICES``
is emptied), as in CI.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("timevis_callback", "timevis_cli")
RUNTIME_EXTRAS = ("cpu", "gpu", "nndescent", "video")  # not dev: tests and tooling only
NOT_INSTALLED_BY_TIMEVIS = {
    # import name: why no install of timevis needs it
    "pandas": "only Dynamics.to_pandas (no command) uses it; its error says to pip install pandas",
}
PRESETS = ["cifar10", "fmnist", "mnist"]
RECORDED_EPOCHS = [0, 1, 2, 3]  # epoch 0 (before training) and 3 training epochs
# small settings: the commands' plumbing is under test here, not the fit's quality
FIT_ARGS = [
    "--preset", "mnist",
    "--set", "training.max_epochs=1",
    "--set", "training.min_edges_per_epoch=0",
    "--set", "projector.hidden=32",
    "--set", "refine.epochs=10",
    "--set", "refine.decoder_steps=50",
]  # fmt: skip
EVAL_ARGS = ["--k", "10", "--temporal-k", "2"]
CHECKED_COMMANDS = ("info", "fit", "render", "eval")  # README's; each with its outputs checked
STEP_TIMEOUT_S = 300

# Not copied into the build folder: the environment, git's data and generated outputs.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", ".hypothesis", "demo_out", "lightning_logs", "runs",
)  # fmt: skip

RECORD_SCRIPT = textwrap.dedent(
    """
    import sys

    import lightning.pytorch as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from timevis_callback import TimeVisCallback


    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.body(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)


    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 4
    images = torch.rand(4, 1, 8, 8, generator=gen)[labels] + 0.5 * torch.rand(300, 1, 8, 8, generator=gen)
    train = TensorDataset(images[:240], labels[:240])
    test = TensorDataset(images[240:], labels[240:])
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[TimeVisCallback(sys.argv[1], train_data=train, test_data=test)],
    )
    trainer.fit(Tiny(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(test, batch_size=60))
    """
)

WHERE_SCRIPT = textwrap.dedent(
    """
    import json
    import timevis_callback, timevis_cli
    from timevis_cli.config import available_presets, configs_dir

    print(json.dumps({
        "timevis_callback": timevis_callback.__file__,
        "timevis_cli": timevis_cli.__file__,
        "configs": str(configs_dir()),
        "presets": available_presets(),
    }))
    """
)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group()) for r in requirements}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Every absolute import of a module: (top-level name, line, eager). Eager: run when the
    module is imported (not inside a function or a ``try`` body). ``if TYPE_CHECKING`` skipped."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int, bool]] = []
        self._lazy = 0

    def _lazily(self, nodes: list[ast.AST]) -> None:
        self._lazy += 1
        for node in nodes:
            self.visit(node)
        self._lazy -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._lazily(node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Try(self, node: ast.Try) -> None:
        self._lazily(node.body)
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
        else:
            for part in node.orelse:
                self.visit(part)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name.partition(".")[0], node.lineno, not self._lazy))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found.append((node.module.partition(".")[0], node.lineno, not self._lazy))


def _third_party_imports() -> list[tuple[str, str, bool]]:
    """(import name, "path:line", eager) of every import of a package that is not timevis's
    nor the standard library's."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            visitor = _Imports()
            visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            for name, line, eager in visitor.found:
                if name not in sys.stdlib_module_names and name not in PACKAGES:
                    found.append((name, f"{path.relative_to(REPO)}:{line}", eager))
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return packages_distributions()


def _distributions(name: str) -> set[str]:
    """The distributions providing import ``name`` here (the name itself if none is installed)."""
    return {_normalized(d) for d in _providers().get(name, [name])}


def test_every_third_party_import_is_declared():
    project = _pyproject()["project"]
    declared = _requirement_names(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        declared |= _requirement_names(project["optional-dependencies"][extra])
    undeclared = sorted(
        f"{name} ({where})"
        for name, where, _ in _third_party_imports()
        if not _distributions(name) & declared and name not in NOT_INSTALLED_BY_TIMEVIS
    )
    assert not undeclared, (
        f"imported but in neither [project].dependencies nor the extras {RUNTIME_EXTRAS}: "
        f"{undeclared}"
    )


def test_an_extra_is_imported_only_where_it_is_needed():
    project = _pyproject()["project"]
    required = _requirement_names(project["dependencies"])
    eager = sorted(
        f"{name} ({where})"
        for name, where, is_eager in _third_party_imports()
        if is_eager and not _distributions(name) & required
    )
    assert not eager, f"imported when the module loads, yet not a dependency: {eager}"


def test_the_wheel_lists_every_package_and_the_configs():
    setuptools = _pyproject()["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for package in PACKAGES
        for init in (REPO / package).rglob("__init__.py")
    }
    listed = set(setuptools["packages"]) - {"timevis_cli.configs"}
    assert listed == on_disk, (sorted(on_disk - listed), sorted(listed - on_disk))
    assert setuptools["package-dir"]["timevis_cli.configs"] == "configs"
    assert setuptools["package-data"]["timevis_cli.configs"] == ["*.toml"]


@dataclass
class Installed:
    venv: Path
    work: Path  # the commands' working folder, outside the checkout
    store: Path
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, expect: int | None = 0) -> subprocess.CompletedProcess:
        """``args`` in the venv's environment from ``work``; checks the exit code when asked."""
        done = subprocess.run(
            [str(a) for a in args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        if expect is not None:
            assert done.returncode == expect, _failure(args, done)
        return done

    def timevis(self, *args: str | Path, expect: int | None = 0) -> subprocess.CompletedProcess:
        return self.run(self.venv / "bin" / "timevis", *args, expect=expect)

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        """This environment's pip acting on the venv (the venv is made without its own pip)."""
        return _run([sys.executable, "-m", "pip", "--python", str(self.python), *args])


def _failure(args, done: subprocess.CompletedProcess) -> str:
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
    return f"{' '.join(map(str, args))} exited {done.returncode}:\n{tail}"


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, **kwargs)
    assert done.returncode == 0, _failure(args, done)
    return done


def _build_wheel(dest: Path) -> Path:
    """The wheel of the checkout, built from a copy (pip writes build/ and *.egg-info into the
    folder it builds, which must not happen to a checkout other processes may be using)."""
    source = dest / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest / "dist"), str(source)])
    wheels = list((dest / "dist").glob("timevis-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _venv_env(venv: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, as in CI, even on a machine with a GPU
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _commands(help_text: str) -> set[str]:
    """The command names under ``Commands:`` in click's ``--help`` output."""
    listing = help_text.split("Commands:", 1)[1]
    return set(re.findall(r"^  (\S+)", listing, re.M))


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    """The exit code is 1 and stderr holds exactly one ``Error:`` line and no traceback."""
    assert done.returncode == 1, _failure(["timevis"], done)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return errors[0]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("install")
    assert REPO not in root.parents, f"{root} must lie outside the checkout {REPO}"
    wheel = _build_wheel(root)
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ["default", *PRESETS]:
        assert f"timevis_cli/configs/{name}.toml" in names, sorted(names)
    for name in ("viewer.html", "viewer.css", "viewer.js"):  # the page render --html writes
        assert f"timevis_cli/render/viewer_assets/{name}" in names, sorted(names)

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    work = root / "work"
    work.mkdir()
    result = Installed(venv=venv, work=work, store=work / "store", env=_venv_env(venv))
    # the torch build this environment runs (pinned, so pip takes it from its cache or
    # find-links instead of resolving another build), then the wheel with only the cpu extra
    result.pip("install", "--no-compile", f"torch=={version('torch')}", f"{wheel}[cpu]")

    script = work / "record.py"
    script.write_text(RECORD_SCRIPT)
    result.run(result.python, script, result.store)
    yield result
    shutil.rmtree(venv)  # about 1 GB, mostly torch


@pytest.fixture(scope="module")
def fitted(installed) -> Installed:
    """The store after ``timevis fit --preset mnist`` (the preset read from the installed package)."""
    done = installed.timevis("fit", installed.store, *FIT_ARGS)
    assert "wrote" in done.stdout, done.stdout
    fit_dir = installed.store / "fit"
    for name in ("projector.pt", "embedding.h5", "fit.json", "config.toml"):
        assert (fit_dir / name).is_file(), sorted(p.name for p in fit_dir.iterdir())
    stats = json.loads((fit_dir / "fit.json").read_text())
    assert stats["epochs"] == RECORDED_EPOCHS
    assert stats["knn_backend"] == "FaissCPU"
    resolved = tomllib.loads((fit_dir / "config.toml").read_text())
    assert resolved["reduction"]["alpha"] == 1.0  # the mnist preset's value (default: 0.0)
    return installed


@pytest.mark.slow
def test_the_installed_package_is_used_with_its_data(installed):
    where = json.loads(installed.run(installed.python, "-c", WHERE_SCRIPT).stdout)
    for key in ("timevis_callback", "timevis_cli", "configs"):
        assert Path(where[key]).is_relative_to(installed.venv), where
    assert where["presets"] == PRESETS
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert expected in installed.timevis("--version").stdout
    listed = _one_error_line(
        installed.timevis("fit", installed.store, "--preset", "nope", expect=None)
    )
    assert "presets: cifar10, fmnist, mnist" in listed


@pytest.mark.slow
def test_every_command_runs_from_the_installed_wheel(fitted):
    """info, render and eval (fit made the fixture); any other command the ``timevis --help``
    lists runs as ``timevis COMMAND RUN_DIR`` with its defaults."""
    store = fitted.store
    commands = _commands(fitted.timevis("--help").stdout)
    assert set(CHECKED_COMMANDS) <= commands, commands
    summary = fitted.timevis("info", store).stdout
    assert f"{len(RECORDED_EPOCHS)} readable" in summary and "240 train, 60 test" in summary
    as_json = json.loads(fitted.timevis("info", "--json", store).stdout)
    assert as_json["epochs"] == RECORDED_EPOCHS and as_json["samples"] == {"train": 240, "test": 60}

    fitted.timevis("render", store, "--html", "--resolution", "40", "--jobs", "1")
    out = store / "render"
    frames = sorted(p.name for p in out.glob("epoch_*.png"))
    assert frames == [f"epoch_{e:04d}.png" for e in RECORDED_EPOCHS]
    for name in ("training.gif", "index.html"):
        assert (out / name).stat().st_size > 0, name

    fitted.timevis("eval", store, *EVAL_ARGS)
    metrics = json.loads((store / "eval" / "metrics.json").read_text())
    assert {row["epoch"] for row in metrics["per_epoch"]} == set(RECORDED_EPOCHS)
    assert (store / "eval" / "metrics.md").is_file() and (store / "eval" / "metrics.png").is_file()

    for command in sorted(commands - set(CHECKED_COMMANDS)):
        fitted.timevis(command, store)


@pytest.mark.slow
def test_optional_features_without_their_extra_fail_in_one_line(fitted):
    store = fitted.store
    before = _snapshot(store)
    line = _one_error_line(
        fitted.timevis("-q", "fit", store, "--knn", "pynndescent", "--overwrite", expect=None)
    )
    assert "pynndescent" in line and "timevis[nndescent]" in line, line
    line = _one_error_line(fitted.timevis("-q", "render", store, "--mp4", expect=None))
    assert "timevis[video]" in line, line
    line = _one_error_line(
        fitted.timevis("-q", "fit", store, "--device", "cuda", "--overwrite", expect=None)
    )
    assert "no CUDA GPU" in line and "--device cpu" in line, line
    assert _snapshot(store) == before  # nothing the user had was touched


@pytest.mark.slow
def test_fit_and_eval_without_faiss_use_torch(installed):
    store = installed.work / "store_without_faiss"
    shutil.copytree(installed.store, store, ignore=shutil.ignore_patterns("fit", "render", "eval"))
    faiss_version = installed.run(
        installed.python,
        "-c",
        "from importlib.metadata import version; print(version('faiss-cpu'))",
    ).stdout.strip()
    installed.pip("uninstall", "-y", "faiss-cpu")
    try:
        missing = installed.run(installed.python, "-c", "import faiss", expect=None)
        assert missing.returncode != 0, "faiss is still importable after its uninstall"
        installed.timevis("fit", store, *FIT_ARGS)
        stats = json.loads((store / "fit" / "fit.json").read_text())
        assert stats["knn_backend"] == "TorchExact", stats["knn_backend"]
        installed.timevis("eval", store, *EVAL_ARGS)
        assert (store / "eval" / "metrics.json").is_file()
    finally:  # the other tests of this module expect the [cpu] install
        installed.pip("install", "--no-compile", f"faiss-cpu=={faiss_version}")
