"""The static TensorRT check (``tensorrt_static_check.py``) passes on the product and catches misuse.

One mypy run per TensorRT API (10.13 stubs, 11.x and TensorRT-RTX generated from their bindings)
checks, side by side, under distinct module names:

* unmodified copies of every checked module (builder, runner, bench timing): the check must
  report nothing;
* one copy per planted typo (:data:`TYPOS`, one typo per copy): the check must report each one,
  at its line, in every API (a probe: in every API, which makes it a problem);
* a canary snippet: a misspelt method must be an error under every API, ``BuilderFlag.FP16`` an
  error under 11.x and RTX only. An API whose stubs did not load (everything ``Any``) reports
  nothing and fails here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

import tensorrt_static_check as check


@dataclass(frozen=True)
class Typo:
    name: str
    source: Path
    original: str
    planted: str


BUILDER, RUNNER = check.CHECKED[:2]
TYPOS = (
    Typo("misspelt_deserialize", RUNNER, "runtime.deserialize_cuda_engine(plan)", "runtime.deserialise_cuda_engine(plan)"),
    Typo("misspelt_context_factory", RUNNER, "else engine.create_execution_context()", "else engine.create_execution_contxt()"),
    Typo("wrong_tensor_io_mode", RUNNER, "trt_module.TensorIOMode.INPUT", "trt_module.TensorIOMode.IN"),
    Typo("wrong_execute_method", RUNNER, "context.execute_async_v3(int(self._stream))",
         "context.execute_async_v2(int(self._stream))"),  # removed in TensorRT 10
    Typo("misspelt_config_attribute", BUILDER, "config.builder_optimization_level = ",
         "config.builder_optimisation_level = "),
    Typo("probe_of_no_such_method", RUNNER, 'hasattr(runtime, "get_engine_validity")', 'hasattr(runtime, "get_engine_validty")'),
    # further probes: of an enum member, with getattr, and of the module itself
    Typo("probe_of_no_such_enum_member", BUILDER, 'hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")',
         'hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPE")'),
    Typo("getattr_probe_of_no_such_flag", BUILDER, 'flag = getattr(trt.BuilderFlag, "VERSION_COMPATIBLE", None)',
         'flag = getattr(trt.BuilderFlag, "VERSION_COMPATIBILITY", None)'),
    Typo("probe_of_no_such_class", BUILDER, 'hasattr(trt, "IProgressMonitor")', 'hasattr(trt, "IProgresMonitor")'),
)
CANARY = '''import tensorrt as trt


def canary(runtime: trt.Runtime, config: trt.IBuilderConfig) -> None:
    runtime.deserialize_cuda_engin(b"")  # line 5: misspelt in every API
    config.set_flag(trt.BuilderFlag.FP16)  # line 6: removed in TensorRT 11 (and absent from RTX)
    hasattr(config, "no_such_setting")  # line 7: a probe of what no API has
'''


@dataclass(frozen=True)
class Planted:
    typo: Typo
    file: Path
    line: int


@dataclass(frozen=True)
class Results:
    legs: tuple[str, ...]
    clean: dict[Path, Path]  # copy -> product file
    planted: tuple[Planted, ...]
    canary: Path
    findings: dict[str, list[check.Finding]]  # leg -> everything mypy reported, all files

    def of(self, file: Path) -> dict[str, list[check.Finding]]:
        return {leg: [f for f in fs if f.file == file.resolve()] for leg, fs in self.findings.items()}


def _plant(typo: Typo, dest: Path) -> Planted:
    copy = check.checkable_copy(typo.source, dest)
    text = copy.read_text()
    assert text.count(typo.original) == 1, (
        f"{typo.source.relative_to(check.ROOT)} no longer holds `{typo.original}` exactly once: update TYPOS "
        "to plant this kind of typo where the code now makes that call")
    at = text.index(typo.original)
    copy.write_text(text.replace(typo.original, typo.planted))
    return Planted(typo, copy.resolve(), text.count("\n", 0, at) + 1)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    legs, config = check.prepare_legs(tmp_path_factory.mktemp("trt-legs"))
    src = tmp_path_factory.mktemp("trt-checked")
    clean = {check.checkable_copy(f, src / f"{f.stem}_clean.py").resolve(): f for f in check.CHECKED}
    planted = tuple(_plant(t, src / f"{t.source.stem}_{t.name}.py") for t in TYPOS)
    canary = src / "canary.py"
    canary.write_text(CANARY)
    files = [*clean, *(p.file for p in planted), canary]
    findings = {leg.name: check.run_mypy(files, leg, config) for leg in legs}
    return Results(tuple(findings), clean, planted, canary.resolve(), findings)


@pytest.mark.slow
def test_product_uses_only_what_each_tensorrt_api_has(results: Results) -> None:
    problems = []
    for copy, product in results.clean.items():
        problems += [p.replace(copy.name, str(product.relative_to(check.ROOT))) for p in check.problems(results.of(copy))]
    assert not problems, "TensorRT API misuse found statically:\n" + "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("typo", TYPOS, ids=[t.name for t in TYPOS])
def test_the_check_reports_a_planted_typo(results: Results, typo: Typo) -> None:
    planted = next(p for p in results.planted if p.typo == typo)
    per_leg = results.of(planted.file)
    missed = [leg for leg, fs in per_leg.items() if not any(f.line == planted.line for f in fs)]
    assert not missed, f"`{typo.planted}` (line {planted.line}) not reported under {missed}: {per_leg}"
    reported = [p for p in check.problems(per_leg) if f"{planted.file.name}:{planted.line}:" in p]
    assert reported, f"the check does not count `{typo.planted}` as a problem: {per_leg}"


@pytest.mark.slow
def test_canary_proves_each_api_really_checks(results: Results) -> None:
    assert len(results.legs) == 3
    for leg, fs in results.of(results.canary).items():
        lines = {(f.line, f.code) for f in fs}
        assert (5, "attr-defined") in lines, (leg, fs)  # every API: a misspelt method
        assert (7, check.PROBE_CODE) in lines, (leg, fs)  # every API: a probe of nothing
        fp16_is_error = any(f.line == 6 for f in fs)
        assert fp16_is_error == (not leg.startswith("tensorrt 10")), (leg, fs)  # 10.x still has BuilderFlag.FP16


def test_no_tensorrt_stub_package_is_importable() -> None:
    """The stubs live on MYPYPATH only: in site-packages, their bare ``tensorrt/`` folder of
    ``.pyi`` files would import as an empty namespace package, taken for TensorRT at run time."""
    spec = importlib.util.find_spec("tensorrt")
    assert spec is None or spec.origin not in (None, "namespace"), (
        f"`import tensorrt` finds a package without code at {list(spec.submodule_search_locations or [])}: "
        "type stubs installed into site-packages? pip uninstall tensorrt-stubs, then install them with "
        f"{check.STUBS10_INSTALL}")
