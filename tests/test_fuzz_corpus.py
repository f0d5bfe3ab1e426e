"""Every fuzz target, replayed over its corpus and smoke-tested with hypothesis.

Targets are discovered, not listed: each ``fuzz/fuzz_<name>.py`` with a
``TestOneInput(data: bytes)`` function is imported by path, and every file in
``fuzz/corpus/<name>/`` is fed to it. A target added later is picked up
without touching this file; a target without a corpus fails here.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = sorted(FUZZ_DIR.glob("fuzz_*.py"))


def _name(target: Path) -> str:
    return target.stem.removeprefix("fuzz_")


def _corpus_dir(target: Path) -> Path:
    return FUZZ_DIR / "corpus" / _name(target)


@functools.cache
def _load(target: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_fuzz_target_{_name(target)}", target)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry_point(target: Path) -> Callable[[bytes], None]:
    entry = getattr(_load(target), "TestOneInput", None)
    assert callable(entry), f"{target.name} has no TestOneInput(data: bytes)"
    return entry  # type: ignore[no-any-return]


def _corpus_cases() -> list[object]:
    cases: list[object] = []
    for target in TARGETS:
        corpus = _corpus_dir(target)
        files = sorted(p for p in corpus.iterdir() if p.is_file()) if corpus.is_dir() else []
        cases += [pytest.param(target, f, id=f"{_name(target)}/{f.name}") for f in files]
    return cases


def test_targets_are_found() -> None:
    assert {_name(t) for t in TARGETS} >= {"link_handshake", "link_cells"}


@pytest.mark.parametrize("target", TARGETS, ids=_name)
def test_every_target_has_a_corpus(target: Path) -> None:
    corpus = _corpus_dir(target)
    assert corpus.is_dir(), f"missing {corpus.relative_to(FUZZ_DIR.parent)}"
    assert any(p.is_file() for p in corpus.iterdir()), f"{corpus} is empty"


@pytest.mark.parametrize("target", TARGETS, ids=_name)
def test_targets_do_not_import_atheris_at_module_level(target: Path) -> None:
    _load(target)  # atheris is not installed: importing it here would fail


@pytest.mark.parametrize(("target", "seed_file"), _corpus_cases())
def test_corpus_replays_cleanly(target: Path, seed_file: Path) -> None:
    _entry_point(target)(seed_file.read_bytes())


@pytest.mark.parametrize("target", TARGETS, ids=_name)
def test_stored_seeds_match_the_generator(target: Path) -> None:
    """Targets with a ``seeds()`` function: the corpus still holds its output."""
    make = getattr(_load(target), "seeds", None)
    if make is None:
        pytest.skip("target has no seeds() generator")
    for name, data in make().items():
        stored = _corpus_dir(target) / name
        assert stored.is_file(), f"regenerate: python {target.name} --write-seeds ..."
        assert stored.read_bytes() == data, f"{stored.name} is stale; regenerate the seeds"


@pytest.mark.parametrize("target", TARGETS, ids=_name)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.binary(max_size=4096))
def test_hypothesis_smoke(target: Path, data: bytes) -> None:
    _entry_point(target)(data)
