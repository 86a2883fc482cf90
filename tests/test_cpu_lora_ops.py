"""loraops' CPU LoRA ops (serving/cpu_lora_ops.py, installed in vLLM by the plugin) against the upstream
formula with rows without adapter masked, on random tensors.

torch lives in the server environment only: tests/cpu_lora_ops_check.py runs there once for all cases
(a few seconds) and reports per case; the tests below assert on that report. Cases cover the three
ops in their bgmv (per-token indices) and sgmv (per-sequence segments) forms, several adapters, ranks
1/8/16, rows without adapter (-1) alone, mixed in and interleaved, one adapter for all rows, 3-D and
4-D weights, float32 and bfloat16, expand assigning or adding, slices at an offset, shrink scaling,
padding between the adapter's and the output's width, and upstream's one-row broadcast and row limit.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest

from loraops.envs import require, server_env
from loraops.serving import cpu_lora_ops
from loraops.serving.vllm_plugin import install_cpu_lora_ops

CHECK = Path(__file__).with_name("cpu_lora_ops_check.py")
PATTERNS = ("mixed", "all_none", "all_same", "last_slot_and_none", "runs", "interleaved")


def _case(kind: str, op: str, pattern: str, **kw: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "kind": kind,
        "op": op,
        "pattern": pattern,
        "rank": 8,
        "dims": 4,
        "dtype": "float32",
        "add": True,
        "scaling": 1.0,
        "offset": 0,
        "pad": 0,
        "rows": "same",
        "tokens": 24,
        "slots": 4,
    }
    case.update(kw)
    mode = f"x{case['scaling']}" if op == "shrink" else ("add" if case["add"] else "set")
    extra = "".join(
        f"-{k}{case[k]}" for k in ("offset", "pad", "rows", "tokens") if case[k] != _case_default(k)
    )
    case["id"] = f"{kind}-{op}-{pattern}-r{case['rank']}-{case['dims']}d-{case['dtype']}-{mode}{extra}"
    case["seed"] = len(CASES)
    return case


def _case_default(key: str) -> Any:
    return {"offset": 0, "pad": 0, "rows": "same", "tokens": 24}[key]


CASES: list[dict[str, Any]] = []
_rotation = itertools.cycle(itertools.product((1, 8, 16), (3, 4), ("float32", "bfloat16")))
for _kind, _op, _pattern in itertools.product(
    ("bgmv", "sgmv"), ("shrink", "expand", "expand_slice"), PATTERNS
):
    for _variant in (0, 1):
        _rank, _dims, _dtype = next(_rotation)
        CASES.append(
            _case(
                _kind,
                _op,
                _pattern,
                rank=_rank,
                dims=_dims,
                dtype=_dtype,
                add=bool(_variant),
                scaling=(1.0, 0.5)[_variant],
                offset=(0, 24)[_variant] if _op == "expand_slice" else 0,
            )
        )
for _kind in ("bgmv", "sgmv"):
    for _add in (False, True):
        # the adapter's width and the output's differ: expand writes the common columns
        CASES.append(_case(_kind, "expand", "mixed", pad=8, add=_add))
        CASES.append(_case(_kind, "expand", "mixed", pad=-8, add=_add, dtype="bfloat16"))
        # more input rows than output rows: expand keeps the first ones
        CASES.append(_case(_kind, "expand", "mixed", rows="more", add=_add))
    CASES.append(_case(_kind, "shrink", "mixed", pad=4, scaling=2.0))  # buffer wider than the rank
    CASES.append(_case(_kind, "shrink", "interleaved", tokens=200, rank=16, dims=3))
    CASES.append(_case(_kind, "expand", "mixed", tokens=200, rank=16, dtype="bfloat16"))
for _op, _pattern, _add in itertools.product(
    ("shrink", "expand", "expand_slice"), ("all_same", "all_none"), (False, True)
):
    if _op != "shrink" or _add:  # one input row for every output row: upstream broadcasts it
        CASES.append(
            _case("bgmv", _op, _pattern, rows="one", add=_add, offset=8 if _op == "expand_slice" else 0)
        )

IDS = [c["id"] for c in CASES]
BY_ID = {c["id"]: c for c in CASES}


@pytest.fixture(scope="module")
def report() -> dict[str, dict[str, Any]]:
    server = require(server_env())
    proc = subprocess.run(
        [str(server.python), str(CHECK)],
        input=json.dumps(CASES),
        env=server.environ({"OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_cases_have_distinct_names() -> None:
    assert len(set(IDS)) == len(CASES)


@pytest.mark.parametrize("case_id", IDS)
def test_fast_op_matches_reference(report: dict[str, dict[str, Any]], case_id: str) -> None:
    got = report[case_id]
    assert got["close"], f"max |fast - reference| = {got['max_abs_diff']:.3g} (indices {got['indices']})"


@pytest.mark.parametrize("case_id", IDS)
def test_rows_without_adapter_and_other_columns_exact(
    report: dict[str, dict[str, Any]], case_id: str
) -> None:
    """Rows with a negative index: unchanged when the op adds, zero when it assigns; columns outside the
    op's region unchanged. Exactly, in every dtype."""
    assert report[case_id]["base_rows_exact"], report[case_id]["indices"]


@pytest.mark.parametrize("case_id", IDS)
def test_fallback_equals_reference(report: dict[str, dict[str, Any]], case_id: str) -> None:
    """The masked upstream formula (LORAOPS_VLLM_PLUGIN_FAST_LORA=0) is the reference, bit for bit."""
    assert report[case_id]["masked_equals_reference"]


PATHS = {
    ("sgmv", "all_same"): "all",
    ("sgmv", "all_none"): "none",
    ("sgmv", "runs"): "slices",
    ("sgmv", "interleaved"): "gather",
    ("bgmv", "all_same"): "all",
    ("bgmv", "all_none"): "none",
    ("bgmv", "interleaved"): "gather",
}


@pytest.mark.parametrize(("kind", "pattern"), sorted(PATHS))
def test_path_follows_the_indices(report: dict[str, dict[str, Any]], kind: str, pattern: str) -> None:
    """One adapter for all rows: one matmul; none: nothing; sgmv with a few segments: row slices; rows
    interleaved: gathered per slot (every path is compared with the reference above)."""
    paths = {report[c["id"]]["path"] for c in CASES if (c["kind"], c["pattern"]) == (kind, pattern)}
    assert paths == {PATHS[kind, pattern]}


@pytest.mark.parametrize("fast", [True, False])
def test_plugin_installs_the_ops_by_name(fast: bool) -> None:
    """lora_ops gets every op; punica_cpu (imported the names) gets those it has; fallback: bgmv only."""
    names = (
        "bgmv_shrink",
        "bgmv_expand",
        "bgmv_expand_slice",
        "sgmv_shrink",
        "sgmv_expand",
        "sgmv_expand_slice",
    )

    def upstream() -> None:
        return None

    lora_ops = types.SimpleNamespace(**dict.fromkeys(names, upstream))
    punica_cpu = types.SimpleNamespace(**dict.fromkeys(names, upstream), PunicaWrapperCPU=object)
    install_cpu_lora_ops([lora_ops, punica_cpu], fast=fast)
    expected = cpu_lora_ops.FAST_OPS if fast else cpu_lora_ops.MASKED_OPS
    installed = {
        (where, name): getattr(module, name)
        for where, module in (("lora_ops", lora_ops), ("punica_cpu", punica_cpu))
        for name in names
    }
    assert installed == {
        (where, name): expected.get(name, upstream) for where in ("lora_ops", "punica_cpu") for name in names
    }
