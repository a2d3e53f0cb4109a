"""An instrumented model survives what users do to models, on three model families.

Each operation runs on a model instrumented explicitly and on one found by discovery, and
is compared with an uninstrumented twin built from the same seed. A copy is a clean module
(or, under discovery, a separately traced one): never an error, never spans from the
original's state, the same numbers as the plain model.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from model_families import FAMILIES, Family, run, same

import visiontel.torch as vt
from visiontel.torch import TorchInstrumentor, _model, _torch_private, _tree

from torch_support import Telemetry, assert_no_hooks

pytest.importorskip("ultralytics", reason="needs ultralytics (visiontel-torch[test])")
pytest.importorskip("torchvision", reason="needs torchvision (visiontel-torch[test])")

FAMILY_NAMES = sorted(FAMILIES)


class Subject:
    """One instrumented model, its plain twin and the spans it has produced."""

    def __init__(self, family: Family, mode: str, telemetry: Telemetry) -> None:
        self.family, self.mode, self.telemetry = family, mode, telemetry
        self.twin = family.build()
        self.model = family.build()
        self.example = family.example()
        self.instrumentor: TorchInstrumentor | None = None
        providers = {
            "tracer_provider": telemetry.tracer_provider,
            "meter_provider": telemetry.meter_provider,
        }
        if mode == "explicit":
            vt.instrument_model(self.model, name="subject", **providers)  # type: ignore[arg-type]
        else:
            self.instrumentor = TorchInstrumentor()
            self.instrumentor.instrument(name="subject", **providers)
            run(self.model, self.example)  # discovered here
        assert vt.is_instrumented(self.model)

    def plain(self, model: torch.nn.Module | None = None, example: Any = None) -> Any:
        """Run the twin (or a copy) without going through discovery: its forward, directly."""
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (model or self.twin).forward(self.example if example is None else example)

    def roots(self) -> int:
        return sum(
            1
            for span in self.telemetry.spans()
            if span.parent is None and span.name == "inference subject"
        )

    def assert_still_traced(self) -> None:
        before = self.roots()
        assert same(run(self.model, self.example), self.plain())
        assert self.roots() == before + 1

    def assert_copy_is_independent(self, clone: torch.nn.Module) -> None:
        original = _model.instrumentation_of(self.model)
        if self.mode == "explicit":
            assert_no_hooks(clone)
            assert not vt.is_instrumented(clone)
        before = self.roots()
        assert same(run(clone, self.example), self.plain())
        theirs = _model.instrumentation_of(clone)
        if theirs is None:
            assert self.roots() == before  # no span from the original's state
        else:
            assert theirs is not original  # discovered on its own: a separate model
        self.assert_still_traced()

    def close(self) -> None:
        if self.instrumentor is not None:
            self.instrumentor.uninstrument()


@pytest.fixture(params=[(f, m) for f in FAMILY_NAMES for m in ("explicit", "discovered")])
def subject(request: pytest.FixtureRequest, telemetry: Telemetry) -> Iterator[Subject]:
    family, mode = request.param
    made = Subject(FAMILIES[family], mode, telemetry)
    yield made
    made.close()


def test_deepcopy(subject: Subject) -> None:
    subject.assert_copy_is_independent(copy.deepcopy(subject.model))


def test_pickle_carries_nothing_of_visiontel(subject: Subject) -> None:
    payload = pickle.dumps(subject.model)
    assert b"visiontel" not in payload
    subject.assert_copy_is_independent(pickle.loads(payload))


def test_torch_save_and_load(subject: Subject) -> None:
    buffer = io.BytesIO()
    torch.save(subject.model, buffer)
    assert b"visiontel" not in buffer.getvalue()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    subject.assert_copy_is_independent(loaded)


def test_to_half_float(subject: Subject) -> None:
    model, twin = subject.model, subject.twin
    assert model.to("cpu") is model
    model.half()
    twin.half()
    half_example = _half(subject.example)
    plain_error = instrumented_error = None
    try:
        expected = subject.plain(example=half_example)
    except Exception as exc:  # half on CPU: some kernels exist, some do not
        plain_error = type(exc)
    try:
        got = run(model, half_example)
    except Exception as exc:
        instrumented_error = type(exc)
    assert instrumented_error == plain_error
    if plain_error is None:
        assert same(got, expected)
    model.float()
    twin.float()
    subject.assert_still_traced()


def test_jit_trace(subject: Subject) -> None:
    example = subject.example if subject.family.name != "torchvision" else (subject.example,)

    def trace(model: torch.nn.Module) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(model, example, strict=False, check_trace=False)

    try:
        expected = trace(subject.twin)
    except Exception as exc:  # not traceable as a plain model: the same error, then
        with pytest.raises(type(exc)):
            trace(subject.model)
        subject.assert_still_traced()
        return
    before = subject.roots()
    traced = trace(subject.model)
    assert subject.roots() == before  # tracing is not an inference
    with torch.no_grad():
        assert same(traced(subject.example), expected(subject.example))
    assert subject.roots() == before
    subject.assert_still_traced()


def test_module_replacement(subject: Subject, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tree, "CHECK_INTERVAL_NS", 0)
    if subject.mode == "explicit":  # layers: the probes must follow the new modules
        vt.instrument_model(
            subject.model,
            name="subject",
            granularity="layer",
            tracer_provider=subject.telemetry.tracer_provider,
            meter_provider=subject.telemetry.meter_provider,
        )
    subject.family.replace(subject.model)
    subject.family.replace(subject.twin)
    subject.assert_still_traced()
    subject.telemetry.exporter.clear()
    run(subject.model, subject.example)
    names = {s.name for s in subject.telemetry.spans() if s.parent is not None}
    assert names
    for name in names:  # every child span names a module the model has now
        subject.model.get_submodule(name)
    if subject.mode == "explicit" and subject.family.name == "ultralytics":
        assert not any(n.endswith(".bn") for n in names)  # fused away
        assert "model.0.conv" in names  # the fused conv is probed


def test_copy_taken_during_a_sampled_forward(telemetry: Telemetry) -> None:
    """A deepcopy or pickle made mid-forward (layer probes armed) is still clean."""
    model = FAMILIES["plain"].build()
    copies: list[torch.nn.Module] = []
    _midway[:] = [model, copies]
    model.backbone.append(CopyMidway())
    telemetry.instrument(model, name="subject", granularity="layer")
    example = FAMILIES["plain"].example()
    expected = run(model, example)
    _midway.clear()
    vt.uninstrument_model(model)
    assert len(copies) == 2
    for clone in copies:
        clone.backbone[-1] = torch.nn.Identity()  # type: ignore[index]
        assert_no_hooks(clone)
        assert same(run(clone, example), expected)


_midway: list[Any] = []  # (model, where copies go) for CopyMidway; kept off the module


class CopyMidway(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _midway:
            model, copies = _midway
            copies.append(copy.deepcopy(model))
            copies.append(pickle.loads(pickle.dumps(model)))
        return x


def test_public_api_fallback_still_survives_copies(telemetry: Telemetry) -> None:
    """Without the private hook path, copies carry inert hooks instead of failing."""
    with _torch_private.force_public_api():
        model = FAMILIES["plain"].build()
        telemetry.instrument(model, name="subject")
        clone = copy.deepcopy(model)
        loaded = pickle.loads(pickle.dumps(model))
        example = FAMILIES["plain"].example()
        expected = run(model, example)
        telemetry.exporter.clear()
        for other in (clone, loaded):
            assert not vt.is_instrumented(other)
            assert same(run(other, example), expected)
        assert telemetry.spans() == []  # the inert hooks record nothing
        run(model, example)
        assert [s.name for s in telemetry.spans() if s.parent is None] == ["inference subject"]


def test_spawn_workers_get_clean_models(telemetry: Telemetry) -> None:
    import multiprocessing

    models = {}
    for name in FAMILY_NAMES:
        model = FAMILIES[name].build()
        telemetry.instrument(model, name=name)
        models[name] = model
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        report = pool.apply(_run_in_worker, (models,))
    for name, model in models.items():
        clean, output = report[name]
        assert clean, f"{name}: the worker's model carries hooks"
        assert same(output, run(model, FAMILIES[name].example()))


def _run_in_worker(models: dict[str, torch.nn.Module]) -> dict[str, tuple[bool, Any]]:
    report = {}
    for name, model in models.items():
        hooks = any(getattr(m, a) for m in model.modules() for a in _torch_private.HOOK_DICTS)
        report[name] = (not hooks, run(model, FAMILIES[name].example()))
    return report


def test_checkpoint_loads_where_visiontel_is_not_installed(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    for name in FAMILY_NAMES:
        model = FAMILIES[name].build()
        telemetry.instrument(model, name=name, granularity="layer")
        run(model, FAMILIES[name].example())
        torch.save(model, tmp_path / f"{name}.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        class NoVisiontel:
            def find_spec(self, name, path=None, target=None):
                if name == "visiontel" or name.startswith("visiontel."):
                    raise ImportError("visiontel is not installed here")
        sys.meta_path.insert(0, NoVisiontel())
        for name in {FAMILY_NAMES!r}:
            model = torch.load({str(tmp_path)!r} + f"/{{name}}.pt", weights_only=False)
            # (an editable install's import finder may be loaded under a name with
            # "visiontel" in it: that is not the package)
            loaded = [m for m in sys.modules if m.split(".")[0] == "visiontel"]
            assert not loaded, loaded
            print(name, "loaded", type(model).__name__)
        """
    )
    tests_dir = str(Path(__file__).parent)  # the plain family's class lives here
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": tests_dir},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("loaded") == len(FAMILY_NAMES)


def _half(example: Any) -> Any:
    if isinstance(example, list):
        return [t.half() for t in example]
    return example.half()
