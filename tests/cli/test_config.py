"""Tests of timevis_cli.config: defaults file, presets, precedence, validation, TOML round trip."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import pytest

from timevis_cli import config as config_module
from timevis_cli.config import (
    Config,
    KNNConfig,
    ReductionConfig,
    TrainingConfig,
    available_presets,
    configs_dir,
    load_config,
    preset_path,
)
from timevis_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILE = REPO / "configs" / "default.toml"

PRESETS = {
    "mnist": {
        "reduction": {"r0": 0.25, "alpha": 1.0, "beta": 1.0},
        "projector": {"depth": 3},
        "training": {"recon_weight": 1.0},
    },
    "fmnist": {
        "reduction": {"r0": 0.07, "alpha": 2.0, "beta": 1.3},
        "projector": {"depth": 4},
        "training": {"recon_weight": 30.0},
    },
    "cifar10": {
        "reduction": {"r0": 0.3, "alpha": 0.0, "beta": 0.1},
        "projector": {"depth": 4},
        "training": {"recon_weight": 10.0},
    },
}
"""The presets' values (docs/method.md §4-5)."""


def _flat(tables: dict) -> dict[str, object]:
    return {f"{s}.{k}": v for s, keys in tables.items() for k, v in keys.items()}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped files ---------------------------------------------------------------------------


def test_configs_dir_is_the_checkout_folder() -> None:
    assert configs_dir() == REPO / "configs"
    assert set(PRESETS) <= set(available_presets())
    assert "default" not in available_presets()


def test_default_file_equals_the_dataclass_defaults() -> None:
    assert load_config(DEFAULT_FILE) == Config.defaults()


def test_default_file_lists_every_key_with_a_comment() -> None:
    data = tomllib.loads(DEFAULT_FILE.read_text(encoding="utf-8"))
    defaults = Config.defaults()
    expected = {
        section.name: {item.name for item in dataclasses.fields(getattr(defaults, section.name))}
        for section in dataclasses.fields(Config)
    }
    assert {name: set(keys) for name, keys in data.items()} == expected
    lines = DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\w+ = ", line):
            assert lines[number - 1].startswith("# "), f"no comment above {line!r}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_applies_exactly_its_overrides(name: str) -> None:
    data = tomllib.loads(preset_path(name).read_text(encoding="utf-8"))
    Config.from_dict(data, source=f"preset {name}")  # every key exists, every value is valid
    assert _flat(data) == _flat(PRESETS[name])
    resolved = _flat(load_config(preset=name).to_dict())
    defaults = _flat(Config.defaults().to_dict())
    changed = {key for key in defaults if resolved[key] != defaults[key]}
    assert changed <= set(_flat(data))
    for key, value in _flat(data).items():
        assert resolved[key] == value, key


def test_knn_backends_match_the_neighbors_module() -> None:
    from timevis_cli.fit.neighbors import KNN_BACKENDS

    for backend in KNN_BACKENDS:
        assert KNNConfig(backend=backend).backend == backend


def test_reduction_keys_construct_reduction_params() -> None:
    from timevis_cli.fit.reduction import ReductionParams

    values = dataclasses.asdict(load_config(preset="fmnist").reduction)
    values.pop("enabled")
    assert ReductionParams(**values).r0 == 0.07


# --- precedence ----------------------------------------------------------------------------------


def test_precedence_flag_over_set_over_file_over_preset_over_default(tmp_path: Path) -> None:
    file = _write(tmp_path / "run.toml", "[reduction]\nr0 = 0.1\n")
    assert load_config().reduction.r0 == 0.25
    assert load_config(preset="fmnist").reduction.r0 == 0.07
    assert load_config(file, preset="fmnist").reduction.r0 == 0.1
    assert load_config(file, "fmnist", ["reduction.r0=0.2"]).reduction.r0 == 0.2
    winner = load_config(file, "fmnist", ["reduction.r0=0.2"], {"reduction.r0": 0.3})
    assert winner.reduction.r0 == 0.3
    # a flag left at None was not given
    assert load_config(file, "fmnist", ["r0=0.2"], {"r0": None}).reduction.r0 == 0.2
    # other keys of lower layers survive
    assert winner.reduction.alpha == 2.0 and winner.training.recon_weight == 30.0


def test_later_set_entries_win() -> None:
    assert load_config(overrides=["training.lr=0.1", "lr=0.2"]).training.lr == 0.2


# --- unknown keys --------------------------------------------------------------------------------


def test_unknown_key_in_set_suggests() -> None:
    message = "unknown key 'trainig.lr' in --set; did you mean 'training.lr'?"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=["trainig.lr=0.1"])


def test_unknown_key_of_a_known_section_is_matched_within_it() -> None:
    with pytest.raises(ConfigError, match=re.escape("did you mean 'complex.rate_temporal'?")):
        load_config(overrides=["complex.rate_tempral=5"])
    # nothing close in [training]: its keys are listed, no far-fetched guess
    with pytest.raises(ConfigError, match=re.escape("'training.foo' in --set; [training] has: ")):
        load_config(overrides=["training.foo=1"])


def test_key_in_the_wrong_section_suggests_its_section() -> None:
    with pytest.raises(ConfigError, match=re.escape("did you mean 'knn.n_neighbors'?")):
        load_config(overrides=["training.n_neighbors=10"])


def test_unknown_bare_key_suggests() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("unknown key 'sed' in --set; did you mean 'fit.seed'?")
    ):
        load_config(overrides=["sed=3"])


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    file = _write(tmp_path / "run.toml", "[training]\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert "'training.learning_rat'" in str(info.value)
    assert str(file) in str(info.value)


def test_unknown_section_in_file_suggests(tmp_path: Path) -> None:
    file = _write(tmp_path / "run.toml", "[trainig]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match=re.escape("did you mean 'training.lr'?")):
        load_config(file)
    empty = _write(tmp_path / "empty.toml", "[rendr]\n")
    with pytest.raises(ConfigError, match=re.escape("unknown section [rendr]")) as info:
        load_config(empty)
    assert "did you mean [render]?" in str(info.value)


def test_top_level_key_in_file_must_be_in_a_section(tmp_path: Path) -> None:
    file = _write(tmp_path / "run.toml", "lr = 0.1\n")
    with pytest.raises(ConfigError, match=re.escape("did you mean 'training.lr'?")) as info:
        load_config(file)
    assert "must be inside a section" in str(info.value)
    table = _write(tmp_path / "table.toml", "training = 3\n")
    with pytest.raises(ConfigError, match=re.escape("[training]")):
        load_config(table)


def test_unknown_key_in_preset_names_the_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "default.toml", "")
    _write(tmp_path / "broken.toml", "[knn]\nn_neighbours = 10\n")
    monkeypatch.setattr(config_module, "configs_dir", lambda: tmp_path)
    assert available_presets() == ["broken"]
    with pytest.raises(ConfigError) as info:
        load_config(preset="broken")
    message = str(info.value)
    assert "unknown key 'knn.n_neighbours' in preset 'broken'" in message
    assert "did you mean 'knn.n_neighbors'?" in message


def test_unknown_key_in_flags() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("in command-line flags; did you mean 'fit.seed'")
    ):
        load_config(flags={"fit.sead": 1})


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'mnst'; did you mean 'mnist'") as info:
        load_config(preset="mnst")
    for name in PRESETS:
        assert name in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path)
    broken = _write(tmp_path / "broken.toml", "[training\nlr = 0.1\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        load_config(broken)
    assert str(broken) in str(info.value)


# --- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "section", "key", "expected"),
    [
        ("knn.n_neighbors=20", "knn", "n_neighbors", 20),
        ("training.lr=0.005", "training", "lr", 0.005),
        ("training.lr=1e-3", "training", "lr", 0.001),
        ("training.lr=.5", "training", "lr", 0.5),
        ("training.lr=1", "training", "lr", 1.0),
        ("render.gif=false", "render", "gif", False),
        ("reduction.enabled = true", "reduction", "enabled", True),
        ("render.split=test", "render", "split", "test"),
        ('render.split="both"', "render", "split", "both"),
        ("fit.device=cuda:0", "fit", "device", "cuda:0"),
        ("fit.epochs=1-160", "fit", "epochs", "1-160"),
        ("fit.epochs=5", "fit", "epochs", "5"),
        ("fit.epochs=0-200:10", "fit", "epochs", "0-200:10"),
        ("render.epochs=1,5,10-20", "render", "epochs", "1,5,10-20"),
        ("n_neighbors=7", "knn", "n_neighbors", 7),
        ("recon_weight=30", "training", "recon_weight", 30.0),
    ],
)
def test_set_values_are_parsed(entry: str, section: str, key: str, expected: object) -> None:
    value = getattr(getattr(load_config(overrides=[entry]), section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_ambiguous_bare_key() -> None:
    with pytest.raises(ConfigError, match="key 'epochs' in --set is ambiguous") as info:
        load_config(overrides=["epochs=5"])
    for section in ("fit", "render", "eval"):
        assert f"'{section}.epochs'" in str(info.value)


@pytest.mark.parametrize("entry", ["training.lr", "=5", "  =5"])
def test_malformed_set(entry: str) -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(overrides=[entry])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("knn.n_neighbors=many", "an integer"),
        ("knn.n_neighbors=3.5", "an integer"),
        ("knn.n_neighbors=true", "an integer"),
        ("training.lr=fast", "a number"),
        ("training.lr=true", "a number"),
        ("render.gif=yes", "a boolean"),
        ("training.lr=[1, 2]", "a number"),
    ],
)
def test_type_errors_name_key_value_type_and_source(entry: str, expected: str) -> None:
    name, _, raw = entry.partition("=")
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[entry])
    message = str(info.value)
    assert message.startswith(f"{name} = ")
    assert "in --set has the wrong type" in message
    assert f"expected {expected}" in message
    assert raw.strip("[]").split(",")[0] in message


def test_type_error_in_file_and_flags(tmp_path: Path) -> None:
    file = _write(tmp_path / "run.toml", '[projector]\ndepth = "4"\n')
    with pytest.raises(ConfigError, match=re.escape('projector.depth = "4" in config file')):
        load_config(file)
    with pytest.raises(ConfigError, match=re.escape("fit.seed = true in command-line flags")):
        load_config(flags={"fit.seed": True})
    with pytest.raises(ConfigError, match="expected a string"):
        load_config(flags={"fit.epochs": 5})


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ("knn.n_neighbors=1", "must be in [2, 1000]"),
        ("knn.boundary_neighbors=0", "must be in [2, 1000]"),
        ("complex.temporal_neighbors=0", "must be in [1, 1000]"),
        ("complex.temporal_window=1", "0 (all epochs) or in [2, 100000]"),
        ("complex.rate_temporal=0", "must be > 0"),
        ("complex.prune_offset=-1", "must be >= 0"),
        ("complex.boundary_source=input", "must be one of auto, store, feature, none"),
        ("reduction.coverage=0", "must be in (0, 1]"),
        ("reduction.coverage=1.5", "must be in (0, 1]"),
        ("reduction.r0=0", "must be > 0"),
        ("reduction.alpha=-1", "must be >= 0"),
        ("reduction.init_size=0", "must be in [1, 10000000]"),
        ("projector.depth=0", "must be in [1, 32]"),
        ("training.lr=0", "must be > 0"),
        ("training.lr=nan", "finite"),
        ("training.lr=inf", "finite"),
        ("training.lr_gamma=1.5", "must be in (0, 1]"),
        ("training.batch_size=0", "must be in [1, 10000000]"),
        ("render.resolution=8", "must be in [16, 2048]"),
        ("render.resolution=4096", "must be in [16, 2048]"),
        ("render.jobs=-1", "must be in [0, 1024]"),
        ("render.bounds=local", "must be one of global, per-epoch"),
        ("fit.device=gpu", "auto, cpu, cuda or cuda:<i>"),
        ("fit.seed=-1", "must be in [0, 4294967295]"),
        ("fit.epochs=1-x", "epoch RANGE"),
        ("eval.k=0", "must be in [1, 1000]"),
        # absurd sizes are refused before anything is allocated
        ("projector.hidden=2000000000", "must be in [2, 8192]"),
        ("projector.hidden=2e9", "must be in [2, 8192]"),
        ("projector.depth=1000", "must be in [1, 32]"),
        ("knn.n_neighbors=100000", "must be in [2, 1000]"),
        ("complex.temporal_window=1000000000", "0 (all epochs) or in [2, 100000]"),
        ("training.batch_size=1e12", "must be in [1, 10000000]"),
        ("training.max_epochs=1e9", "must be in [1, 1000000]"),
        ("training.min_edges_per_epoch=1e12", "must be in [0, 1000000000]"),
        ("refine.memory_mb=1e9", "must be in [0, 1048576]"),
        ("refine.decoder_batch=1e9", "must be in [1, 10000000]"),
        ("render.max_points=1e9", "must be in [1, 10000000]"),
        ("render.jobs=100000", "must be in [0, 1024]"),
        ("eval.temporal_k=1e6", "must be in [1, 100000]"),
    ],
)
def test_range_errors_state_the_rule_and_default(entry: str, rule: str) -> None:
    name = entry.partition("=")[0]
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[entry])
    message = str(info.value)
    assert message.startswith(f"{name} = ") and "in --set" in message
    assert rule in message
    if "finite" not in rule:
        assert f"(default: {name} = " in message


def test_a_projector_too_large_for_memory_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["projector.hidden=8192", "projector.depth=8"])
    message = str(info.value)
    assert message.startswith("projector.hidden = 8192 with projector.depth = 8 makes 1,073,741,824")
    assert "16 GiB" in message and "keep 2 x depth x hidden^2 <= 268,435,456" in message
    assert load_config(overrides=["projector.hidden=4096", "projector.depth=8"]).projector.depth == 8


@pytest.mark.parametrize(
    ("entry", "expected"), [("training.max_epochs=1e2", 100), ("knn.n_neighbors=2.0e1", 20)]
)
def test_integer_keys_take_whole_numbers_in_exponent_form(entry: str, expected: int) -> None:
    section, key = entry.partition("=")[0].split(".")
    value = getattr(getattr(load_config(overrides=[entry]), section), key)
    assert value == expected and type(value) is int


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("[training]\nlr = 0.1\n".encode("utf-16"), "(it looks like UTF-16)"),
        ("[training]\nlr = 0.1\n".encode("utf-16-be"), "(it looks like UTF-16)"),
        ("[training]\nlr = 0.1\n".encode("utf-32"), "(it looks like UTF-32)"),
        ('[render]\nsplit = "tést"\n'.encode("latin-1"), "(byte 19 is 0xe9)"),
    ],
    ids=["utf-16", "utf-16-be-without-bom", "utf-32", "latin-1"],
)
def test_a_config_file_that_is_not_utf8_is_one_line_naming_the_encoding(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    path = tmp_path / "run.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config file {path} is not UTF-8 text {expected}")
    assert "re-save it as UTF-8 (e.g. iconv -f " in message and "\n" not in message


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_bytes(b"\xef\xbb\xbf[training]\nlr = 0.1\n")
    assert load_config(path).training.lr == 0.1


def test_cross_key_check() -> None:
    with pytest.raises(ConfigError, match="min_dist must be <= spread"):
        load_config(overrides=["training.min_dist=2"])
    assert (
        load_config(overrides=["training.min_dist=2", "training.spread=3"]).training.spread == 3.0
    )


def test_direct_construction_is_validated_and_frozen() -> None:
    with pytest.raises(ConfigError, match=re.escape("training.lr = -1.0 is out of range")):
        TrainingConfig(lr=-1)
    with pytest.raises(ConfigError, match="expected an integer"):
        KNNConfig(n_neighbors=3.0)
    reduction = ReductionConfig(r0=1)
    assert reduction.r0 == 1.0 and isinstance(reduction.r0, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        reduction.r0 = 0.5  # type: ignore[misc]


# --- round trip ----------------------------------------------------------------------------------


def test_to_toml_round_trip(tmp_path: Path) -> None:
    config = load_config(
        preset="cifar10",
        overrides=[
            "training.weight_decay=3e-7",
            "complex.prune_offset=0",
            "fit.epochs=0-200:10",
            "fit.device=cuda:1",
            "render.mp4=true",
            "render.fps=12.5",
            "reduction.coverage=0.95",
        ],
    )
    for comments in (True, False):
        file = _write(tmp_path / f"resolved_{comments}.toml", config.to_toml(comments=comments))
        assert load_config(file) == config
    assert Config.from_dict(config.to_dict()) == config
    text = config.to_toml(header="resolved for run 7\nsecond line")
    assert text.startswith("# resolved for run 7\n# second line\n")
    assert tomllib.loads(text) == config.to_dict()


@pytest.mark.parametrize(
    "value", ["plain", 'quo"te', "back\\slash", "tab\tnew\nline", "bell\x07del\x7f", "λ ünïcode 😀"]
)
def test_toml_strings_round_trip(value: str) -> None:
    assert tomllib.loads(f"v = {config_module._toml_value(value)}")["v"] == value


@pytest.mark.parametrize("value", [0.1, 1e-5, 3e-7, 1e16, 123456.789, 5.0, -2.5])
def test_toml_floats_round_trip(value: float) -> None:
    parsed = tomllib.loads(f"v = {config_module._toml_value(value)}")["v"]
    assert isinstance(parsed, float) and math.isclose(parsed, value, rel_tol=0, abs_tol=0)


def test_to_dict_is_plain() -> None:
    values = Config.defaults().to_dict()
    for section in values.values():
        for value in section.values():
            assert type(value) in (bool, int, float, str)
