"""Benchmark: what an unattended retrain costs when there is nothing to do (the common scheduled case).

A workspace whose champion was trained on the current prepared data, on a real MLflow and Prefect
server and the stack's Prefect worker. Measured, alternating, best of N:

* reference: the same decisions called directly, no Prefect: prepare (finds the data current), DVC
  version, the champion from the registry alias, the skip rule;
* the retrain flow in-process (what `loraops retrain` runs): preflight, prepare, version and champion as
  Prefect tasks, then skipped;
* a run of the deployment on the worker, started through the Prefect API (what the scheduler and the
  UI's "Run" do), until its final state: adds the worker's poll and a fresh Python process per run.

Ratios against the reference say what the orchestration costs a no-op run.

    .venv/bin/python bench/bench_unattended.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def make_workspace_with_champion(tmp: Path) -> tuple[Any, Any, Any]:
    """A workspace with the demo data prepared and versioned, and a champion tagged with that data."""
    from conftest import make_workspace
    from loraops.config import load_params
    from loraops.data.demo import write_demo_dataset
    from loraops.data.versioning import prepare_data, version_data
    from loraops.loop.rules import lineage_tags
    from loraops.registry.tracking import Registry
    from loraops.stack.local import up_control_plane
    from loraops.workspace import Workspace

    ws = Workspace(make_workspace(tmp / "ws", {"schedule": {"cron": None}}))
    ws.ensure()
    params = load_params(ws.params_file)
    write_demo_dataset(ws.root / params.data.raw)
    base = params.base_model.resolve(ws.models)
    prepare_data(ws, params.data, tokenizer_dir=Path(base), sequence_len=params.train.sequence_len)
    data = version_data(ws, params.data)
    urls = up_control_plane(ws, params)
    registry = Registry(urls.mlflow, params.registry)
    adapter = tmp / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    tags = lineage_tags(
        data,
        workspace_commit=None,
        code_commit=None,
        base_model_source=params.base_model.source,
        base_model_path=base,
        base_model_name=params.base_model.name(),
    )
    with registry.run("bench-champion", tags) as run:
        run.log_artifacts(adapter, "adapter")
    version = registry.register_adapter(run.run_id, "adapter", tags=tags)
    registry.set_champion(version.version)
    return ws, params, urls


def direct(ws: Any, params: Any) -> str | None:
    """The reference: the no-op run's decisions without Prefect."""
    from loraops.data.versioning import prepare_data, version_data
    from loraops.loop.rules import skip_reason
    from loraops.registry.tracking import Registry
    from loraops.stack.local import stack_urls

    base = params.base_model.resolve(ws.models)
    prepare_data(ws, params.data, tokenizer_dir=Path(base), sequence_len=params.train.sequence_len)
    data = version_data(ws, params.data)
    champion = Registry(stack_urls(params).mlflow, params.registry).champion()
    return skip_reason((champion.version, champion.tags) if champion else None, data, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("LORAOPS_CACHE", str(ROOT / ".loraops" / "cache"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-unattended-"))
    ws = None
    try:
        ws, params, urls = make_workspace_with_champion(tmp)
        os.environ["PREFECT_API_URL"] = urls.prefect_api  # before Prefect is imported
        from loraops.flows import load_flow
        from loraops.stack.deploy import deployment_name, trigger_retrain, up_worker, wait_for_run

        up_worker(ws, params, urls)
        retrain = load_flow("retrain")
        times: dict[str, list[float]] = {"direct": [], "flow": [], "worker": []}
        for _ in range(args.rounds):
            started = time.monotonic()
            reason = direct(ws, params)
            times["direct"].append(time.monotonic() - started)
            assert reason is not None, "the bench's champion should make the run skip"
            started = time.monotonic()
            outcome = retrain(workspace=str(ws.root), evaluate=False)
            times["flow"].append(time.monotonic() - started)
            assert outcome.state == "skipped", outcome
            started = time.monotonic()
            run_id = trigger_retrain(urls.prefect_api, deployment_name(params), {"evaluate": False})
            state = wait_for_run(urls.prefect_api, run_id, timeout_s=600)
            times["worker"].append(time.monotonic() - started)
            assert state == "Completed", state
        best = {k: min(v) for k, v in times.items()}
        print(
            f"no-op retrain, best of {args.rounds} (seconds): "
            + ", ".join(f"{k} {v:.2f}" for k, v in best.items())
        )
        print(f"  flow in-process / direct : {best['flow'] / best['direct']:.2f}x")
        print(f"  worker run / direct      : {best['worker'] / best['direct']:.2f}x")
        print(f"  worker run / in-process  : {best['worker'] / best['flow']:.2f}x")
    finally:
        if ws is not None:
            subprocess.run(
                [sys.executable, "-m", "loraops.cli", "--workspace", str(ws.root), "down"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
