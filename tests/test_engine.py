"""The engine and the results store: a tiny real pipeline (ACSF, cVAE, adam-hopping, EMT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from invfp import testing
from invfp.engine import chunk_seeds, plan_chunks
from invfp.errors import ConfigError, InputError
from invfp.results import ResultsStore

TARGETS = [1.6, 2.4]
N = 4
CHUNK = 2


@pytest.fixture(scope="module")
def tiny():
    pipe, R, y = testing.tiny_pipeline(seed=0, n_data=60, epochs=40)
    pipe.optimizer_options = {"restarts": 2, "hops": 0, "steps": 40, "refine_steps": 10}
    return pipe, R, y


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    """An uninterrupted run of the tiny pipeline (seed 5) in a fresh directory."""
    pipe, _, _ = tiny
    directory = tmp_path_factory.mktemp("full")
    with ResultsStore(directory, _config()) as store:
        result = pipe.run(TARGETS, N, store=store, seed=5, chunk_size=CHUNK, progress=False)
    return directory, result


def _config(**over):
    return {"run": "tiny", "targets": TARGETS, "n": N, "chunk": CHUNK, **over}


def _emt_formation(atoms) -> float:
    ref = bulk("Pt", "fcc", a=3.92)
    ref.calc = EMT()
    probe = atoms.copy()
    probe.calc = EMT()
    return (probe.get_potential_energy() - len(atoms) * ref.get_potential_energy() / len(ref)) / len(atoms)


def test_chunk_plan_and_seeds():
    assert plan_chunks(5, 2) == [(0, 2), (2, 2), (4, 1)]
    assert chunk_seeds(0, 1, 2) == chunk_seeds(0, 1, 2)
    seeds = {chunk_seeds(s, t, c) for s in range(2) for t in range(3) for c in range(4)}
    assert len(seeds) == 24  # every chunk of every run draws its own streams
    with pytest.raises(ConfigError):
        plan_chunks(0, 2)


def test_run_records_are_honest(tiny, full_run):
    pipe, _, _ = tiny
    directory, result = full_run
    records = result.records
    assert [(r.target_index, r.sample) for r in records] == [(t, s) for t in range(2) for s in range(N)]
    assert result.computed_chunks == 4 and result.skipped_chunks == 0
    rep = pipe.representation
    for record in records:
        # The stored loss is the MAE between the generated fingerprint and the structure's.
        got = rep.featurize(record.atoms)
        assert record.loss == pytest.approx(float(np.abs(got - record.fingerprint).mean()), rel=1e-4, abs=1e-7)
        # Acceptance is exactly "every filter accepted"; the oracle never filters.
        ok = record.loss <= pipe.loss_threshold and record.verdicts["geometry"].accepted
        assert record.accepted == ok
        assert record.verdicts["loss-threshold"].accepted == (record.loss <= pipe.loss_threshold)
    # The true property is EMT's formation energy of the stored structure.
    for record in records[:3]:
        assert record.true_property == pytest.approx(_emt_formation(record.atoms), abs=1e-8)
    # The summary is what the rows say.
    summary = json.loads((directory / "summary.json").read_text())
    for index, row in enumerate(summary["targets"]):
        mine = [r for r in records if r.target_index == index]
        errors = np.array([abs(r.true_property - TARGETS[index]) for r in mine])
        assert row["generated"] == N
        assert row["accepted"] == sum(r.accepted for r in mine)
        assert row["mae_all"] == pytest.approx(errors.mean())
        assert row["within_all"] == pytest.approx(100 * np.mean(errors <= 0.1))
    from ase.io import read

    accepted = read(directory / "accepted.extxyz", index=":") if any(r.accepted for r in records) else []
    assert len(accepted) == sum(r.accepted for r in records)


def test_resume_recomputes_only_missing_chunks_identically(tiny, full_run, tmp_path):
    pipe, _, _ = tiny
    full = full_run[1].records
    # An interrupted run: only chunks (0, 1) and (1, 0) made it to the database.
    with ResultsStore(tmp_path / "cut", _config()) as store:
        for ti, chunk, first in ((0, 1, 2), (1, 0, 0)):
            records = pipe.process_chunk(ti, TARGETS[ti], chunk, first, CHUNK, seed=5)
            store.write_chunk(ti, chunk, records)
        assert store.committed_chunks() == {(0, 1), (1, 0)}
        with pytest.raises(InputError, match="already stored"):
            store.write_chunk(1, 0, records)
        resumed = pipe.run(TARGETS, N, store=store, seed=5, chunk_size=CHUNK, progress=False)
    assert resumed.computed_chunks == 2 and resumed.skipped_chunks == 2
    assert [(r.target_index, r.sample) for r in resumed.records] == [(r.target_index, r.sample) for r in full]
    for a, b in zip(resumed.records, full, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-9)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-9)
        assert a.accepted == b.accepted


def test_store_refuses_another_run_unless_forced(tmp_path):
    ResultsStore(tmp_path / "r", _config()).close()
    with pytest.raises(InputError, match=r"different run \(differs in: n\).*--force"):
        ResultsStore(tmp_path / "r", _config(n=5))
    (tmp_path / "r" / "summary.json").write_text("{}")
    with ResultsStore(tmp_path / "r", _config(n=5), force=True) as store:
        assert store.read_json("config.json")["n"] == 5
    assert not (tmp_path / "r" / "summary.json").exists()
    # Two processes on one run directory would interleave chunks: the second is refused.
    with ResultsStore(tmp_path / "r", _config(n=5)):
        with pytest.raises(ConfigError, match="in use"):
            ResultsStore(tmp_path / "r", _config(n=5))


def test_calibration_threshold_is_factor_times_quantile(tiny):
    pipe, R, _ = tiny
    before = pipe.loss_threshold
    try:
        info = pipe.calibrate(R[:4], seed=0, quantile=0.5, factor=3.0)
        assert pipe.loss_threshold == info["threshold"]
    finally:
        pipe.loss_threshold = before
    assert info["n"] == 4
    assert info["threshold"] == pytest.approx(3.0 * np.median(info["losses"]))


def test_pipeline_bad_configuration(tiny):
    from invfp.engine import Pipeline

    pipe, _, _ = tiny
    with pytest.raises(ConfigError, match="surrogate"):
        Pipeline(pipe.representation, pipe.generator, numbers=[78] * 5, filters=("surrogate",))
    with pytest.raises(ConfigError, match="twice"):
        Pipeline(pipe.representation, pipe.generator, numbers=[78] * 5, filters=("geometry", "energy"))
    with pytest.raises(InputError, match="finite"):
        pipe.run([float("nan")], 2, progress=False)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0 .*got 1.5"):
        pipe.run([1.0], 2, seed=1.5, progress=False)
    with pytest.raises(ConfigError, match="reconstruct_seed must be an integer >= 0 .*got -1"):
        pipe.run([1.0], 2, reconstruct_seed=-1, progress=False)
    # What reconstruction would refuse is refused when the pipeline is made, before any chunk.
    kw = {"numbers": "Pt5", "filters": ("loss-threshold",)}
    assert Pipeline(pipe.representation, pipe.generator, **kw).numbers == [78] * 5  # a formula, as in reconstruct
    with pytest.raises(InputError, match="cannot read the composition 'Xx5'"):
        Pipeline(pipe.representation, pipe.generator, numbers="Xx5", filters=("loss-threshold",))
    with pytest.raises(InputError, match="periodic reconstruction needs a cell"):
        Pipeline(pipe.representation, pipe.generator, pbc=True, **kw)
    with pytest.raises(InputError, match="cell lengths must be positive"):
        Pipeline(pipe.representation, pipe.generator, cell=-20.0, **kw)
    with pytest.raises(InputError, match="does not fit a cell 3.0 Å wide"):
        Pipeline(pipe.representation, pipe.generator, cell=3.0, **kw)
    with pytest.raises(ConfigError, match="no parameter 'hopz' \\(did you mean 'hops'\\?\\)"):
        Pipeline(pipe.representation, pipe.generator, optimizer_options={"hopz": 2}, **kw)
    with pytest.raises(ConfigError, match="restarts=0 must be an integer >= 1"):
        Pipeline(pipe.representation, pipe.generator, optimizer_options={"restarts": 0}, **kw)
    with pytest.raises(ConfigError, match="loss_threshold must be a finite number > 0"):
        Pipeline(pipe.representation, pipe.generator, loss_threshold=float("nan"), **kw)


def test_prescreen_reconstructs_the_draws_the_surrogate_puts_closest_to_the_target(tiny):
    from invfp.engine import Pipeline
    from invfp.models.surrogate import Surrogate

    pipe, R, y = tiny
    surrogate = Surrogate(epochs=30, hidden=32, layers=2, batch_size=16)
    surrogate.fit(R, y, seed=0, device="cpu")
    kw = dict(numbers=[78] * 5, cell=20.0, surrogate=surrogate, filters=("geometry",), oracle=None,
              optimizer_options=pipe.optimizer_options, feature_scale=np.ones(R.shape[1]), device="cpu")
    screened = Pipeline(pipe.representation, pipe.generator, prescreen=6, **kw)
    target, count = 2.4, 3
    records = screened.process_chunk(0, target, 0, 0, count, 7)
    sample_seed, _ = chunk_seeds(7, 0, 0)
    draws = pipe.generator.sample(target, count * 6, seed=sample_seed)
    gap = np.abs(surrogate.predict(draws) - target)
    best = np.sort(np.argsort(gap, kind="stable")[:count])
    np.testing.assert_array_equal(np.stack([r.fingerprint for r in records]), draws[best])
    assert gap[best].max() <= np.sort(gap)[count - 1] and gap[best].mean() < gap.mean()
    with pytest.raises(ConfigError, match="prescreen needs a trained surrogate"):
        Pipeline(pipe.representation, pipe.generator, numbers=[78] * 5, filters=(), prescreen=4)
    with pytest.raises(ConfigError, match="prescreen must be an integer"):
        Pipeline(pipe.representation, pipe.generator, numbers=[78] * 5, filters=(), prescreen=-1)


def test_pipeline_searches_once_per_sample_unless_told(tiny):
    import copy

    pipe, R, _ = tiny
    unreachable = R[:1] * 1.5  # never reaches tol, so every allowed attempt is spent
    (once,) = pipe.reconstruct(unreachable, seed=0)
    assert len(once.restart_losses) == pipe.optimizer_options["restarts"]
    twice_pipe = copy.copy(pipe)
    twice_pipe.optimizer_options = {**pipe.optimizer_options, "attempts": 2}
    (twice,) = twice_pipe.reconstruct(unreachable, seed=0)
    assert len(twice.restart_losses) == 2 * pipe.optimizer_options["restarts"]
    assert twice.loss <= once.loss


def test_reconstruct_seed_reseeds_only_the_reconstruction(tiny):
    pipe, _, _ = tiny
    base = pipe.process_chunk(0, TARGETS[0], 0, 0, CHUNK, 5)
    same = pipe.process_chunk(0, TARGETS[0], 0, 0, CHUNK, 5, reconstruct_seed=5)
    other = pipe.process_chunk(0, TARGETS[0], 0, 0, CHUNK, 5, reconstruct_seed=6)
    for a, b, c in zip(base, same, other, strict=True):
        np.testing.assert_array_equal(a.fingerprint, c.fingerprint)  # the same generated samples
        np.testing.assert_array_equal(a.atoms.positions, b.atoms.positions)  # default: seed seeds it
    assert any(not np.allclose(a.atoms.positions, c.atoms.positions) for a, c in zip(base, other, strict=True))
    run = pipe.run(TARGETS[:1], CHUNK, seed=5, chunk_size=CHUNK, progress=False, reconstruct_seed=6)
    for a, c in zip(run.records, other, strict=True):
        np.testing.assert_array_equal(a.atoms.positions, c.atoms.positions)
