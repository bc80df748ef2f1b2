"""The plugin system: built-ins, entry points, isolation, duplicates, unknown names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import invfp
from invfp.errors import DuplicateComponentError, PluginError, UnknownComponentError
from invfp.hookspecs import hookimpl


def test_builtins_registered_through_hooks(clean_plugins):
    comps = invfp.list_components()
    names = {(c["kind"], c["name"]) for c in comps}
    for expected in [
        ("representation", "acsf"),
        ("optimizer", "adam-hopping"),
        ("model", "cvae"),
        ("validator", "loss-threshold"),
        ("validator", "energy"),
    ]:
        assert expected in names
    acsf = next(c for c in comps if c["name"] == "acsf")
    assert acsf["plugin"] == "invfp.builtins.representations"
    assert acsf["version"] == invfp.__version__
    assert acsf["description"]


def test_unknown_name_lists_options_and_closest(clean_plugins):
    with pytest.raises(UnknownComponentError) as info:
        invfp.get_optimizer("adam-hoping")
    msg = str(info.value)
    assert "did you mean 'adam-hopping'" in msg
    assert "available:" in msg and "lbfgs" in msg


class _Dup:
    @staticmethod
    @hookimpl
    def register_optimizers(register):
        register("adam-hopping", lambda **kw: None)


def test_duplicate_name_names_both_providers(clean_plugins):
    with pytest.raises(DuplicateComponentError) as info:
        clean_plugins.register_plugin(_Dup, name="dup-plugin")
    msg = str(info.value)
    assert "invfp.builtins.optimizers" in msg and "dup-plugin" in msg
    # the failed plugin was removed again: everything else still works
    assert "adam-hopping" in clean_plugins.get_registry().names("optimizer")


class _Misspelled:
    @staticmethod
    @hookimpl
    def register_optimisers(register):  # British spelling: not a hook
        register("x", lambda **kw: None)


def test_misspelled_hook_is_an_error(clean_plugins):
    with pytest.raises(PluginError, match="register_optimisers.*did you mean 'register_optimizers'"):
        clean_plugins.register_plugin(_Misspelled, name="typo")


class _Extra:
    @staticmethod
    @hookimpl
    def register_validators(register):
        register("always", lambda **kw: "always-validator", aliases=("yes",), description="Accept all.")


def test_runtime_plugin_usable_by_name_and_alias(clean_plugins):
    clean_plugins.register_plugin(_Extra, name="extra", version="9.9")
    assert invfp.get_validator("always") == "always-validator"
    assert invfp.get_validator("yes") == "always-validator"
    entry = clean_plugins.get_registry().get("validator", "always")
    assert (entry.plugin, entry.version, entry.description) == ("extra", "9.9", "Accept all.")
    clean_plugins.unregister_plugin("extra")
    with pytest.raises(UnknownComponentError):
        invfp.get_validator("always")


def _fake_distribution(tmp_path, dist: str, module: str, body: str) -> None:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    info = tmp_path / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[invfp]\n{dist} = {module}\n")


def test_plugin_that_raises_at_import_is_isolated(clean_plugins, tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken-plugin", "broken_mod", "raise RuntimeError('boom at import')\n")
    _fake_distribution(
        tmp_path,
        "good-plugin",
        "good_mod",
        """
        from invfp.hookspecs import hookimpl
        @hookimpl
        def register_validators(register):
            register("good-one", lambda **kw: "ok")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("INVFP_LOAD_PLUGINS", "broken-plugin,good-plugin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = clean_plugins.get_registry().names("validator")
    messages = [str(w.message) for w in caught]
    assert any("broken-plugin" in m and "boom at import" in m for m in messages), messages
    assert "good-one" in names and "loss-threshold" in names
    entry = clean_plugins.get_registry().get("validator", "good-one")
    assert (entry.plugin, entry.version) == ("good-plugin", "1.0")


def test_env_var_limits_external_plugins(clean_plugins, tmp_path, monkeypatch):
    _fake_distribution(
        tmp_path,
        "other-plugin",
        "other_mod",
        """
        from invfp.hookspecs import hookimpl
        @hookimpl
        def register_models(register):
            register("other-model", lambda **kw: None)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("INVFP_LOAD_PLUGINS", "")
    assert "other-model" not in clean_plugins.get_registry().names("model")
    clean_plugins.reset()
    monkeypatch.setenv("INVFP_LOAD_PLUGINS", "other-plugin")
    assert "other-model" in clean_plugins.get_registry().names("model")


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("INVFP_LOAD_PLUGINS", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "invfp", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_real_example_plugin_found_through_entry_point(clean_plugins):
    pytest.importorskip("invfp_example", reason="plugins/invfp-example is not installed (make install does it)")
    out = _cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    ex = [e for e in entries if e["name"] == "sorted-distances"]
    assert ex and ex[0]["plugin"] == "example" and ex[0]["version"] == "0.1.0"
    assert ex[0]["kind"] == "representation"
    # and usable by name through the library, loaded via the entry point
    clean_plugins.load_entry_point_plugins("example")
    rep = invfp.get_representation("sorted-distances")
    from ase.build import molecule

    assert rep.featurize(molecule("H2O")).shape == (3,)


def test_env_var_hides_example_plugin_from_cli():
    pytest.importorskip("invfp_example")
    out = _cli("plugins", "--json", env_extra={"INVFP_LOAD_PLUGINS": ""})
    assert out.returncode == 0
    assert "sorted-distances" not in out.stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "sys.argv = ['invfp', '--help']\n"
        "from invfp.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "print('NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "NO-TORCH" in out.stdout and "Usage" in out.stdout


def test_cli_table_is_whole_in_80_columns():
    # A pipe gets 80 columns: every component's name is printed whole (folded, never cut
    # to "…"), no line is wider, and the table closes (its right border is there).
    out = _cli("plugins", env_extra={"COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "…" not in out.stdout and max(len(line) for line in lines) <= 80
    assert all(line.endswith(("┓", "┃", "┩", "│", "┘")) for line in lines if line.startswith(("┏", "┃", "┡", "│", "└")))
    for name in ("acsf", "adam-hopping (adam)", "lbfgs", "cvae", "loss-threshold", "surrogate"):
        assert f"│ {name} " in out.stdout
    assert "invfp (built-in)" in out.stdout and "representations" in out.stdout


def test_cli_unknown_kind_is_one_line_error():
    out = _cli("plugins", "--kind", "nonsense")
    assert out.returncode == 2
    assert "unknown kind 'nonsense'" in out.stderr
    assert "Traceback" not in out.stderr


def test_version_command():
    out = _cli("version")
    assert out.returncode == 0 and out.stdout.strip() == f"invfp {invfp.__version__}"
