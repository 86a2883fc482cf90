"""The demo loop end to end on the real stack: `loraops demo` once per session (tests/fixtures_stack.py:
MLflow and Prefect on PostgreSQL, artifacts in S3 on moto, DVC, Axolotl, vLLM, the sync hook, the
Prefect worker), then what an engineer and the scheduler do with it. Each test creates the versions and
workspaces it uses, reads their numbers from what it created, and leaves the champion as it found it.
"""

from __future__ import annotations

import csv
import json
import struct
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
import yaml
from openai import OpenAI

from conftest import make_workspace, registered_version, run_cli
from loraops.config import Params
from loraops.data.demo import as_chat, routing_schema, write_demo_dataset
from loraops.evaluate.metrics import first_json_object
from loraops.evaluate.suite import question_of
from loraops.gate.promote import sync_status
from loraops.serving.policy import CANARY_TAG, OVERRIDE_TAG
from loraops.serving.vllm import VllmClient
from loraops.stack.deploy import deploy_retrain, trigger_retrain, wait_for_run
from loraops.workspace import Workspace
from test_notify_stand_in import Receiver

if TYPE_CHECKING:
    from fixtures_stack import Demo

pytestmark = [pytest.mark.e2e, pytest.mark.base_model]
pytest_plugins = ["fixtures_moto", "fixtures_stack"]

TRIAGE_KEYS = {"category", "priority", "product"}


def get_json_with_token(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read())


def test_demo_prints_gate_answer_and_urls(demo_stack: Demo) -> None:
    d, output = demo_stack, demo_stack.output
    assert "== gate: gate PASS" in output
    stable_answer = next(line for line in output.splitlines() if "(stable name) ->" in line)
    assert first_json_object(stable_answer.split("->", 1)[1]) is not None, stable_answer
    assert "(base model) ->" in output
    for url in (d.mlflow, d.endpoint, f"http://127.0.0.1:{d.params['stack']['prefect_port']}"):
        assert url in output
    assert "Traceback" not in output
    lines = d.status_after_demo.splitlines()  # `loraops status` right after the demo
    assert "   v1       passed" in "\n".join(lines) and "champion" in next(
        ln for ln in lines if "   v1 " in ln
    )
    assert any(ln.startswith("== data: the champion (v1) was trained on the prepared data") for ln in lines)
    assert any("support-triage -> v1" in ln and "[in sync]" in ln for ln in lines), lines
    prefect_ui = f"http://127.0.0.1:{d.params['stack']['prefect_port']}"
    last = next(ln for ln in lines if ln.startswith("== last retrain: "))
    assert " Completed (" in last and f"{prefect_ui}/runs/flow-run/" in last, last


def test_stable_name_serves_the_adapter_and_base_name_the_base(demo_stack: Demo) -> None:
    d = demo_stack
    assert "support-triage -> v1" in d.status_after_demo  # promoted by the gate, no restart
    d.wait_served(d.champion())  # (tests that move the champion put it back; every one is v1's recipe)
    prompts, expected = d.test_cases(20)
    answers = [first_json_object(d.ask(d.model, prompt)) for prompt in prompts]
    assert all(a is not None and set(a) == TRIAGE_KEYS for a in answers), answers
    right = sum(a == e for a, e in zip(answers, expected, strict=True))
    assert right >= 10, f"only {right}/20 test tickets triaged right through the stable name"
    prompt = prompts[0]
    base_answer = d.ask(d.base_name, prompt)
    base = first_json_object(base_answer)
    assert base is None or set(base) != TRIAGE_KEYS, base_answer


def test_registered_version_has_lineage_gate_decision_and_report(demo_stack: Demo) -> None:
    d = demo_stack
    client = d.client()
    version = client.get_model_version(d.model, "1")
    for tag in ("data_version", "git_commit", "base_model", "gate", "gate.check.gain_over_base", "report"):
        assert version.tags.get(tag), f"missing tag {tag}: {version.tags}"
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    for key in ("candidate.score", "base.score", "rag.score", "candidate.general.mean", "base.general.mean"):
        assert key in metrics, key
    assert metrics["base.score"] == 0.0  # the base model has never seen the task
    for field in TRIAGE_KEYS:  # the base model writes JSON when asked, but not this schema's values
        assert metrics[f"candidate.field.{field}"] > metrics[f"base.field.{field}"], field
    assert metrics["candidate.score.low"] <= metrics["candidate.score"] <= metrics["candidate.score.high"]
    assert metrics["diff.candidate_vs_base.low"] >= d.params["gate"]["min_gain_over_base"]
    assert metrics["candidate.format"] == 1.0 and metrics["candidate.token_f1"] > metrics["rag.token_f1"]
    assert metrics["rag.prompt_tokens"] > 2 * metrics["candidate.prompt_tokens"]  # retrieved examples
    assert version.tags["gate"] == "passed"
    assert version.description.startswith("**Gate PASS**") and "candidate - base" in version.description
    assert metrics["candidate.score"] >= d.params["gate"]["min_task_score"]
    assert run.data.tags["data_version"] == version.tags["data_version"]
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/examples.jsonl", "evaluation/evaluation.json"} <= artifacts
    report = d.cli("report", "1")
    path = Path(report.stdout.strip().splitlines()[-1])
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 4 and "Gate:" in html and "break-even" in html.lower()


def test_the_same_recipe_gives_the_same_adapter_and_the_same_decision(demo_stack: Demo) -> None:
    """Reproducible training and evaluation: a second retrain on the same data, params and seed gives the
    same adapter, tensor for tensor, the same answers to every test example, and a PASS against the
    first version (no spurious "worse than champion")."""
    d = demo_stack
    before, champion = d.versions(), d.champion()
    again = d.cli("retrain")  # unchanged data: the champion was trained on it, nothing to do
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    data_hash = d.client().get_model_version(d.model, "1").tags["data.dvc_hash"]
    assert (
        f"== skipped: data {data_hash[:12]} unchanged: the champion (version {champion}) was trained on it"
        in again.stdout
    )
    assert d.versions() == before
    retrain = d.cli("retrain", "--force")
    assert retrain.returncode == 0, (retrain.stdout + retrain.stderr)[-4000:]
    (again_version,) = d.versions() - before
    client = d.client()
    v1, v2 = (client.get_model_version(d.model, v) for v in ("1", again_version))
    assert v2.tags["gate"] == "passed"
    weights = [d.artifact(v.run_id, "adapter/adapter_model.safetensors").read_bytes() for v in (v1, v2)]
    assert weights[0] == weights[1]
    answers = [d.answers(v.run_id, "candidate") for v in (v1, v2)]
    assert answers[0] == answers[1]
    assert v2.tags["gate.check.vs_champion"].startswith("ok +0.000")  # paired difference exactly 0
    d.cli("promote", champion)  # (the pass promoted the new version: the champion is put back)
    d.wait_served(champion)


def test_a_noop_adapter_fails_on_improvement_over_the_base_every_time_it_is_judged(
    demo_stack: Demo, tmp_path: Path
) -> None:
    d = demo_stack
    v1 = d.client().get_model_version(d.model, "1")
    noop = zero_lora_b(d.artifact(v1.run_id, "adapter"), tmp_path / "noop")
    registered = d.cli("register", str(noop))
    assert registered.returncode == 0, registered.stderr
    version = registered_version(registered.stdout)
    # judged twice: the second evaluation reads its own lm-eval results, not the first one's as well
    for _ in range(2):
        evaluated = d.cli("evaluate", version)
        assert evaluated.returncode == 3, (evaluated.stdout + evaluated.stderr)[-4000:]
        tags = d.client().get_model_version(d.model, version).tags
        assert tags["gate"] == "failed" and tags["gate.check.gain_over_base"].startswith("fail")
        assert tags["gate.check.forgetting"].startswith("ok")  # it changed nothing, so it forgot nothing


def test_expert_review_is_exported_and_recorded(demo_stack: Demo, tmp_path: Path) -> None:
    d = demo_stack
    champion = d.champion()
    exported = d.cli("review", "export", "1", "--out", str(tmp_path / "review.csv"))
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader((tmp_path / "review.csv").open()))
    assert len(rows) == 11 and {"base", "rag", "candidate", "verdict"} <= set(rows[0])  # 15% of 67
    for i, row in enumerate(rows):
        row["verdict"] = "reject" if i == 0 else "approve"
    with (tmp_path / "filled.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    imported = d.cli("review", "import", "1", str(tmp_path / "filled.csv"))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    tags = d.client().get_model_version(d.model, "1").tags
    assert (tags["review.approved"], tags["review.reviewed"]) == ("10", "11")
    assert "review: 10 of 11 approved" in imported.stdout
    # gate.require_review is off in the demo: the review is recorded, the champion does not move
    assert d.champion() == champion


def test_data_is_versioned_with_dvc(demo_stack: Demo) -> None:
    d = demo_stack
    lock = yaml.safe_load((d.ws / "dvc.lock").read_text())
    (out,) = lock["stages"]["prepare"]["outs"]
    assert out["path"] == "data/prepared" and out["md5"].endswith(".dir")
    pushed = d.ws / ".loraops" / "dvc-remote" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
    listing = json.loads(pushed.read_text())  # the directory's listing, pushed to the remote
    assert {e["relpath"] for e in listing} >= {"train.jsonl", "val.jsonl", "test.jsonl"}
    for entry in listing:
        assert (pushed.parents[1] / entry["md5"][:2] / entry["md5"][2:]).is_file(), entry["relpath"]


def _task_states(api: str, flow_run_id: str) -> dict[str, str]:
    """Task name -> final state name of each task run of a flow run (Prefect API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state.name if r.state else "unknown" for r in runs}


def switch_to_chat_data(ws: Path) -> None:
    """The same tickets as chat records (what a user with chat-format data has)."""
    raw = ws / "data" / "raw" / "tickets.jsonl"
    records = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()]
    raw.write_text("".join(json.dumps(as_chat(r)) + "\n" for r in records))
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["data"]["format"] = "chat"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_chat_data_trains_and_evaluates_through_the_flow_and_rollback_hot_swaps(demo_stack: Demo) -> None:
    """A version is trained on the same tickets as chat records (Axolotl chat_template with the tokenizer's
    template, evaluated through the chat endpoint), by runs of the retrain deployment on the stack's
    Prefect worker, started through the Prefect API as the scheduler or the UI's "Run" would: the first
    fails in evaluation (a request timeout no server meets) and is notified; two triggers at once then run
    one retrain, which resumes at evaluation without training again; a further trigger on the unchanged
    data skips. Then the alias moves both ways without a restart. The demo's data, params and champion are
    put back afterwards."""
    d = demo_stack
    pid = d.vllm_pid()
    api = d.prefect_api
    worker_log = d.ws / ".loraops" / "logs" / "worker.log"
    raw = d.ws / "data" / "raw" / "tickets.jsonl"
    original_raw, original_params = raw.read_text(), (d.ws / "params.yaml").read_text()
    before, champion = d.versions(), d.champion()
    try:
        switch_to_chat_data(d.ws)
        good = (d.ws / "params.yaml").read_text()
        broken = yaml.safe_load(good)
        broken["evaluate"]["request_timeout_s"] = 0.001
        broken["schedule"]["retries"] = 0
        receiver = Receiver([200])
        broken["notify"]["webhook_url"] = receiver.url
        (d.ws / "params.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
        try:
            failed = trigger_retrain(api, d.model)
            assert wait_for_run(api, failed) == "Failed", worker_log.read_text()[-4000:]
        finally:
            (d.ws / "params.yaml").write_text(good)
            receiver.server.shutdown()
        states = _task_states(api, failed)
        assert (states["train-adapter"], states["register"], states["evaluate"]) == (
            "Completed",
            "Completed",
            "Failed",
        ), states
        assert [(b["event"], b["model"]) for b in receiver.bodies] == [("failed", d.model)]
        assert failed in receiver.bodies[0]["flow_run_url"]

        runs = [trigger_retrain(api, d.model) for _ in range(2)]  # two triggers at once
        finals = [wait_for_run(api, run) for run in runs]
        judged = [run for run in runs if "evaluate" in _task_states(api, run)]
        assert len(judged) == 1, (
            finals,
            [_task_states(api, r) for r in runs],
            worker_log.read_text()[-4000:],
        )
        resumed = _task_states(api, judged[0])
        assert finals[runs.index(judged[0])] == "Completed", worker_log.read_text()[-4000:]
        assert (resumed["train-adapter"], resumed["register"], resumed["evaluate"], resumed["promote"]) == (
            "Cached",
            "Cached",
            "Completed",
            "Completed",
        ), resumed
        # one version: the failed run registered it, the rerun reused it
        (chat,) = d.versions() - before

        unchanged = trigger_retrain(api, d.model)
        assert wait_for_run(api, unchanged) == "Completed", worker_log.read_text()[-4000:]
        skipped = _task_states(api, unchanged)
        assert "champion" in skipped and "train-adapter" not in skipped, skipped
        status = d.cli("status")
        last = next(ln for ln in status.stdout.splitlines() if ln.startswith("== last retrain: "))
        assert f"/runs/flow-run/{unchanged}" in last and " Completed (" in last, last
        nxt = next(ln for ln in status.stdout.splitlines() if ln.startswith("== next scheduled run: "))
        assert "T03:00" in nxt, nxt  # schedule.cron "0 3 * * *" of the demo's params.yaml

        client = d.client()
        chat_version = client.get_model_version(d.model, chat)
        assert chat_version.tags["gate"] == "passed"
        run = client.get_run(chat_version.run_id)
        config_dir = Path(
            client.download_artifacts(chat_version.run_id, "axolotl", str(d.ws / ".loraops" / "check"))
        )
        rendered = yaml.safe_load((config_dir / "axolotl.yaml").read_text())
        assert rendered["datasets"][0]["type"] == "chat_template"
        assert rendered["datasets"][0]["chat_template"] == "tokenizer_default"
        metrics = run.data.metrics
        assert metrics["candidate.score"] >= d.params["gate"]["min_task_score"], metrics
        for field in TRIAGE_KEYS:
            assert metrics[f"candidate.field.{field}"] > metrics[f"base.field.{field}"], field
        assert run.data.tags["train.launcher"] == "local"
        assert "cost.usd" in metrics and metrics["train.wall_s"] > 0
        history = client.get_metric_history(chat_version.run_id, "train.loss")
        assert len(history) > 10 and len({m.step for m in history}) == len(history)  # one point per step
        # An engineer moves the alias (what the MLflow UI does): the webhook swaps the adapter, both ways.
        d.wait_served(chat)  # the gate promoted it
        for version in (champion, chat):
            promote = d.cli("promote", version)
            assert promote.returncode == 0, promote.stderr
            status = d.wait_served(version)
        # `loraops rollback` goes back to the champion before: the hook kept every served one in the history
        history = json.loads(client.get_registered_model(d.model).tags["loraops.history.champion"])
        assert history[-2:] == [champion, chat]
        rollback = d.cli("rollback")
        assert rollback.returncode == 0, rollback.stderr
        assert f"-> v{champion}, served" in rollback.stdout
        status = d.wait_served(champion)
        served = {m.id: m.root for m in VllmClient(d.endpoint, api_key=d.api_key).models()}
        assert served[d.model] == status["served_path"]
        assert first_json_object(d.ask(d.model, d.test_cases(1)[0][0])) is not None
        assert d.vllm_pid() == pid, "the server was restarted"
    finally:
        raw.write_text(original_raw)
        (d.ws / "params.yaml").write_text(original_params)
        d.cli("data", "prepare")  # the demo's prepared data and dvc.lock as they were
        if d.champion() != champion:
            d.cli("promote", champion)
            d.wait_served(champion)


ROUTING_KEYS = {"team", "sla"}


class Traffic:
    """Client threads asking stable names in a loop; every answer is kept with the name it came from."""

    def __init__(self, d: Demo, prompts: dict[str, list[str]], clients_per_name: int = 2) -> None:
        self.d, self.prompts = d, prompts
        self.answers: dict[str, list[str]] = {name: [] for name in prompts}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(name,), daemon=True)
            for name in prompts
            for _ in range(clients_per_name)
        ]

    def _loop(self, name: str) -> None:
        client = OpenAI(base_url=self.d.endpoint, api_key=self.d.api_key, max_retries=0, timeout=60)
        i = 0
        while not self.stop.wait(0.05):  # paced: the hook and the CLI need some of the 2 cores too
            prompt = self.prompts[name][i % len(self.prompts[name])]
            i += 1
            try:
                resp = client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": prompt}], max_tokens=48, temperature=0
                )
                self.answers[name].append(resp.choices[0].message.content or "")
            except Exception as exc:  # every failed request is a finding
                self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    def wait_for_answers(self, n: int, timeout_s: float = 120) -> None:
        """Wait until every name got ``n`` more answers than it had."""
        start = {name: len(got) for name, got in self.answers.items()}
        deadline = time.monotonic() + timeout_s
        while any(len(self.answers[name]) < start[name] + n for name in start):
            assert time.monotonic() < deadline, f"fewer than {n} answers per name: {self.failures[-3:]}"
            time.sleep(0.1)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def test_a_second_task_is_served_beside_the_first_and_each_moves_alone(
    demo_stack: Demo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second task the way a user adds one: `loraops init` from its data file (the routing task) on the
    first workspace's stack, then the two commands it prints: trained, gated and served on the same vLLM
    under its own names, with its own deployment and schedule beside the first one's. Then both models
    are promoted, one after the other, under traffic to both names. No request fails, every answer has
    its own task's fields, a promotion of one model leaves the other's names as they were."""
    d = demo_stack
    pid = d.vllm_pid()
    routing_model = "ticket-routing"
    # The single deployment name of older releases, left behind by an upgrade: `up` replaces it with the
    # model's own deployment (and never touches another workspace's).
    legacy = yaml.safe_load((d.ws / "params.yaml").read_text())
    legacy["schedule"]["deployment"] = "scheduled"
    deploy_retrain(Workspace(d.ws), Params.model_validate(legacy), d.prefect_api, d.prefect_api)
    assert d.cli("up").returncode == 0
    home = tmp_path_factory.mktemp("routing")
    data = home / "routing.jsonl"
    write_demo_dataset(data, task="routing")
    ws2 = home / "ws"
    started = time.monotonic()
    init = run_cli(
        d.ws, "init", str(ws2), "--data", str(data), "--model-name", routing_model, "--stack", str(d.ws)
    )
    assert init.returncode == 0, init.stderr[-3000:]
    assert f"on the stack of {d.ws}" in init.stdout
    assert init.stdout.splitlines()[-2:] == [
        f"  loraops --workspace {ws2} up",
        f"  loraops --workspace {ws2} retrain",
    ]
    inferred = yaml.safe_load((ws2 / "params.yaml").read_text())["evaluate"]["format"]["json_schema"]
    assert {k: set(v["enum"]) for k, v in inferred["properties"].items()} == {
        k: set(v["enum"])
        for k, v in routing_schema()["properties"].items()  # type: ignore[attr-defined]
    }
    up = run_cli(ws2, "up")  # the two commands init printed, exactly
    try:
        assert up.returncode == 0, (up.stdout + up.stderr)[-3000:]
        setup_s = time.monotonic() - started
        print(f"second task: init + up in {setup_s:.1f} s before its training starts")
        assert "ticket-routing is not served yet" in up.stdout + up.stderr
        assert f"deployment retrain/{routing_model}, cron '0 4 * * *' (UTC)" in up.stdout  # an hour later
        retrain = run_cli(ws2, "retrain")  # (no traffic meanwhile: on 2 cores it would starve the training)
        output = retrain.stdout + retrain.stderr
        assert retrain.returncode == 0, output[-4000:]
        # One deployment per model, each with its own workspace and schedule; the stack's one worker runs
        # both (the second workspace starts none).
        deadline = time.monotonic() + 90  # Prefect's scheduler creates the next runs within seconds
        while True:
            status = d.cli("status").stdout
            listed = status[status.index("== retrain deployments on this stack (2, one per model)") :]
            rows = {
                model: next(ln for ln in listed.splitlines() if ln.strip().startswith(f"retrain/{model} "))
                for model in (d.model, routing_model)
            }
            if all("next none" not in row for row in rows.values()) or time.monotonic() > deadline:
                break
            time.sleep(3)
        for model, ws, cron, at in (
            (d.model, d.ws, "0 3 * * *", "T03:00+00:00"),
            (routing_model, ws2, "0 4 * * *", "T04:00+00:00"),
        ):
            assert f"cron '{cron}'" in rows[model] and f"({ws})" in rows[model], rows[model]
            assert at in rows[model], rows[model]
        assert not (ws2 / ".loraops" / "pids" / "worker.json").exists()
        # A run of its deployment (as its schedule or the UI's "Run" makes) goes to its own model: the
        # stack's worker runs it in ws2, where the data is what ticket-routing's champion was trained on.
        run = trigger_retrain(d.prefect_api, routing_model)
        worker_log = d.ws / ".loraops" / "logs" / "worker.log"
        assert wait_for_run(d.prefect_api, run) == "Completed", worker_log.read_text()[-4000:]
        ran = _task_states(d.prefect_api, run)
        assert "champion" in ran and "train-adapter" not in ran, ran
        client = d.client()
        assert client.get_model_version(routing_model, "1").tags["gate"] == "passed"
        assert client.get_registered_model(routing_model).tags["loraops.serving.base"] == d.base_name
        routing_status = sync_status(d.sync, d.admin_token, routing_model)
        assert str(routing_status["served_version"]) == "1" and routing_status["in_sync"]
        triage_prompts = d.test_cases(8)[0]

        # A second routing version (the same adapter, registered again; a person's override serves it).
        adapter = d.artifact(client.get_model_version(routing_model, "1").run_id, "adapter")
        register = run_cli(ws2, "register", str(adapter))
        assert register.returncode == 0, register.stderr
        client.set_model_version_tag(routing_model, "2", OVERRIDE_TAG, "e2e: same adapter as v1")
        v1_canary = client.get_model_version(routing_model, "1").tags[CANARY_TAG]  # (a generic prompt's
        client.set_model_version_tag(routing_model, "2", CANARY_TAG, v1_canary)  # answer is empty for it)
        triage_versions = [d.client().get_model_version_by_alias(d.model, "champion").version, "1"]
        routing_prompts = [
            question_of(json.loads(line))
            for line in (ws2 / "data/prepared/test.jsonl").read_text().splitlines()[:8]
        ]
        sync = d.sync
        with Traffic(d, {d.model: triage_prompts, routing_model: routing_prompts}) as both:
            for ws, model, version in (
                (ws2, routing_model, "2"),
                (d.ws, d.model, triage_versions[1]),
                (ws2, routing_model, "1"),
                (d.ws, d.model, triage_versions[0]),
            ):
                other = d.model if model == routing_model else routing_model
                before = sync_status(sync, d.admin_token, other)
                promote = run_cli(ws, "promote", version)
                assert promote.returncode == 0, promote.stderr
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    now = sync_status(sync, d.admin_token, model)
                    if str(now.get("served_version")) == version and now.get("in_sync"):
                        break
                    time.sleep(0.3)
                else:
                    raise AssertionError(f"{model} v{version} not served: {now}")
                # The other model's wanted names stay as they were (a version name its aliases left may
                # retire meanwhile: its grace period runs on its own clock).
                after = sync_status(sync, d.admin_token, other)
                wanted = before["desired"]
                assert wanted and after["desired"] == wanted, (model, version)
                serving = after["replicas"][0]["serving"]
                assert {n: serving.get(n) for n in wanted} == wanted, (model, version, serving)
                both.wait_for_answers(4)  # traffic on the new version, to both names
        assert both.failures == []
        assert len(both.answers[d.model]) > 20 and len(both.answers[routing_model]) > 20
        assert all(set(first_json_object(a) or {}) == TRIAGE_KEYS for a in both.answers[d.model])
        assert all(set(first_json_object(a) or {}) == ROUTING_KEYS for a in both.answers[routing_model])
        overview = get_json_with_token(f"{sync}/status", d.admin_token)
        assert set(overview["models"]) == {d.model, routing_model} and overview["not_served"] == {}
        assert d.vllm_pid() == pid, "the server was restarted"
    finally:
        run_cli(ws2, "down", timeout=120)  # nothing of its own runs: the first stack's services stay up


def zero_lora_b(adapter: Path, out: Path) -> Path:
    """A copy of ``adapter`` whose LoRA B matrices are all zero: it loads, and changes nothing."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    raw = bytearray((adapter / "adapter_model.safetensors").read_bytes())
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    for name, spec in header.items():
        if "lora_B" in name:
            start, end = spec["data_offsets"]
            raw[8 + size + start : 8 + size + end] = bytes(end - start)
    (out / "adapter_model.safetensors").write_bytes(bytes(raw))
    return out


def test_bad_inputs_end_with_one_clear_line(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "bad", overrides={"data": {"raw": "data/raw/missing.jsonl"}})
    result = run_cli(ws, "demo", timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "missing.jsonl: data file not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    (ws / "params.yaml").write_text("train:\n  lora_r: sixteen\n")
    result = run_cli(ws, "demo", timeout=300)
    assert result.returncode == 2
    assert "params.yaml:2: train.lora_r" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    ws = make_workspace(tmp_path / "busy")
    port = yaml.safe_load((ws / "params.yaml").read_text())["stack"]["mlflow_port"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = run_cli(ws, "up", timeout=300)
    assert result.returncode == 2
    assert f"port {port} is already in use" in result.stderr and "stack.mlflow_port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (
        not list((ws / ".loraops" / "pids").glob("*.json")) if (ws / ".loraops" / "pids").exists() else True
    )
