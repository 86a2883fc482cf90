"""The alias sync hook's pure logic: signatures, events, names and serving policy (no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from loraops.errors import ConfigError
from loraops.gate.promote import previous_version
from loraops.registry.params import RegistryParams
from loraops.serving.names import (
    HostedModel,
    check_model_name,
    stable_name,
    version_dir,
    version_name,
)
from loraops.serving.policy import (
    CANARY_TAG,
    GREETING,
    OVERRIDE_TAG,
    Canary,
    canary_of,
    pick_canary,
    serve_permission,
)
from loraops.serving.sync import (
    AliasEvent,
    DeliveryLog,
    TagEvent,
    parse_alias_event,
    parse_tag_event,
    sign,
    verify_signature,
)

if TYPE_CHECKING:
    pass


SECRET = "s3cret-for-tests"
TOKEN = "token-for-tests"
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-11-25T10:00:00+00:00",
        "data": {"name": "support-triage", "alias": "champion", "version": "3"},
    }
).encode()


def test_signature_matches_mlflows_own_signer():
    ours = sign(SECRET, "d-1", "1795600000", BODY)
    assert ours == _generate_hmac_signature(SECRET, "d-1", "1795600000", BODY.decode())
    assert verify_signature(SECRET, "d-1", "1795600000", BODY, ours)


def test_signature_refuses_any_change():
    good = sign(SECRET, "d-1", "1795600000", BODY)
    assert not verify_signature("other", "d-1", "1795600000", BODY, good)
    assert not verify_signature(SECRET, "d-2", "1795600000", BODY, good)
    assert not verify_signature(SECRET, "d-1", "1795600001", BODY, good)
    assert not verify_signature(SECRET, "d-1", "1795600000", BODY + b" ", good)
    assert not verify_signature(SECRET, "d-1", "1795600000", BODY, good.replace("v1,", "v2,"))
    assert not verify_signature(SECRET, "d-1", "1795600000", BODY, "")
    assert not verify_signature("", "d-1", "1795600000", BODY, sign("", "d-1", "1795600000", BODY))


def test_signature_accepts_one_of_several_and_checks_age():
    good = sign(SECRET, "d-1", "1000", BODY)
    assert verify_signature(SECRET, "d-1", "1000", BODY, f"v1,AAAA {good}")
    assert verify_signature(SECRET, "d-1", "1000", BODY, good, now=1000 + 299)
    assert not verify_signature(SECRET, "d-1", "1000", BODY, good, now=1000 + 301)
    assert not verify_signature(SECRET, "d-1", "1000", BODY, good, now=1000 - 301)
    bad_ts = sign(SECRET, "d-1", "soon", BODY)
    assert not verify_signature(SECRET, "d-1", "soon", BODY, bad_ts, now=1000)


def test_parse_alias_event():
    assert parse_alias_event(BODY) == AliasEvent("support-triage", "champion", "3")
    deleted = json.loads(BODY)
    deleted["action"] = "deleted"
    assert parse_alias_event(json.dumps(deleted).encode()) == AliasEvent(
        "support-triage", "champion", "3", "deleted"
    )
    other = json.loads(BODY)
    other["action"] = "updated"
    assert parse_alias_event(json.dumps(other).encode()) is None
    other = json.loads(BODY)
    other["entity"] = "model_version"
    assert parse_alias_event(json.dumps(other).encode()) is None
    missing = json.loads(BODY)
    del missing["data"]["version"]
    assert parse_alias_event(json.dumps(missing).encode()) is None
    for junk in (
        b"",
        b"not json",
        b"\xff",
    ):
        assert parse_alias_event(junk) is None


def test_parse_tag_event():
    doc = {
        "entity": "model_version_tag",
        "action": "set",
        "data": {"name": "support-triage", "version": "4", "key": "gate", "value": "passed"},
    }
    assert parse_tag_event(json.dumps(doc).encode()) == TagEvent("support-triage", "4", "gate", "passed")
    assert parse_tag_event(BODY) is None  # an alias event
    deleted = {**doc, "action": "deleted"}
    assert parse_tag_event(json.dumps(deleted).encode()) is None
    no_key = {**doc, "data": {"name": "support-triage", "version": "4", "value": "passed"}}
    assert parse_tag_event(json.dumps(no_key).encode()) is None
    for junk in (b"", b"[]", b"\xff"):
        assert parse_tag_event(junk) is None


def test_a_delivery_id_is_accepted_once_while_its_signature_could_be_replayed():
    log = DeliveryLog(keep_s=600)
    assert not log.seen("d-1", now=1000)
    log.remember("d-1", now=1000)
    assert log.seen("d-1", now=1001)
    assert not log.seen("d-2", now=1001)
    assert not log.seen("d-1", now=1000 + 601)  # its signature has long expired by then


@pytest.mark.parametrize("bad", ["a/b", "..", "a..b", "-lead", "trail-", "sp ace", "x" * 65, "", "ünï"])
def test_unservable_model_names_are_refused_with_the_rule(bad: str):
    with pytest.raises(ConfigError, match="cannot be served") as err:
        check_model_name(bad)
    assert "registry.model_name" in (err.value.hint or "")


def test_names_of_a_served_model(tmp_path: Path):
    assert stable_name("support-triage", "champion") == "support-triage"
    assert stable_name("support-triage", "challenger") == "support-triage-challenger"
    assert version_name("support-triage", "12") == "support-triage-v12"
    assert version_dir(tmp_path, "support-triage", "3") == tmp_path.resolve() / "support-triage" / "v3"
    for version in ("0", "../1", "1/2", "v1", ""):
        with pytest.raises(ConfigError):
            version_dir(tmp_path, "support-triage", version)
    with pytest.raises(ValueError, match="cannot be served"):
        RegistryParams.model_validate({"model_name": "team/triage"})


def test_serving_needs_the_gate_or_a_persons_override():
    assert serve_permission({"gate": "passed"}).allowed
    failed = serve_permission({"gate": "failed"})
    assert not failed.allowed and "gate refused it" in failed.reason and OVERRIDE_TAG in failed.reason
    assert "never judged" in serve_permission({}).reason
    assert "review" in serve_permission({"gate": "awaiting-review"}).reason
    forced = serve_permission({"gate": "failed", OVERRIDE_TAG: "hotfix approved by J. Doe"})
    assert forced.allowed and "J. Doe" in forced.reason
    assert not serve_permission({"gate": "failed", OVERRIDE_TAG: "  "}).allowed


def test_canary_format_and_round_trip_through_its_tag():
    schema = {"type": "object", "required": ["queue"]}
    canary = pick_canary(["p0", "p1", "p2"], [False, True, True], None, [40, 30, 20])
    assert canary == Canary("p1", max_tokens=38)
    from loraops.evaluate.metrics import FormatCheck

    canary = pick_canary(["p0", "p1"], [False, False], FormatCheck(json_schema=schema))
    assert canary.request == "p0" and canary.json_schema == schema
    assert canary_of({CANARY_TAG: canary.to_tag()}) == canary
    assert canary.problem('{"queue": "billing"}') is None
    assert "does not match the JSON schema" in (canary.problem('{"other": 1}') or "")
    assert "empty" in (canary.problem("  ") or "")
    assert canary_of({}) == GREETING and canary_of({CANARY_TAG: "{broken"}) == GREETING
    assert GREETING.problem("anything") is None


def test_the_previous_version_is_the_newest_other_entry_of_the_history():
    assert previous_version(["1", "2", "1"], "1") == "2"
    assert previous_version(["1", "2"], "2") == "1"
    assert previous_version(["3"], "3") is None
    assert previous_version([], None) is None
    assert previous_version(["1", "2"], None) == "2"


def test_each_model_owns_exactly_its_names_and_clashing_models_are_told_apart():
    triage = HostedModel("support")
    assert [triage.owns(n) for n in ("support", "support-challenger", "support-v12")] == [True] * 3
    for other in ("support-triage", "support-v", "support-v1x", "support-vip", "support-challenger-v1"):
        assert not triage.owns(other), other
    assert triage.clashes_with(HostedModel("support-triage")) is None
    assert (
        triage.clashes_with(HostedModel("support-v2"))
        == "'support-v2' serves 'support-v2', a name of 'support'"
    )
    assert triage.clashes_with(HostedModel("support-challenger", aliases=("champion",))) is not None
