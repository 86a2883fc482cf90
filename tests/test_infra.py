"""infra/: the CloudFormation template (cfn-lint, least privilege, deployed on moto) and the trainer image
(hadolint, what it copies, SageMaker's `train` program)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import decode_str

pytest_plugins = ["fixtures_moto"]
ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "cloudformation.yaml"
DOCKERFILE = ROOT / "infra" / "Dockerfile.trainer"
BIN = Path(sys.executable).parent


def _template() -> dict[str, Any]:
    decoded, errors = decode_str(TEMPLATE.read_text())
    assert not errors and decoded is not None, errors
    return dict(decoded)


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    props = resource["Properties"]
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])] + [props.get("PolicyDocument", {})]
    return [s for doc in docs for s in doc.get("Statement", [])]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.slow  # cfn-lint loads every resource schema
def test_cfn_lint_passes_and_catches_a_broken_template(tmp_path: Path) -> None:
    ok = subprocess.run([BIN / "cfn-lint", TEMPLATE], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        TEMPLATE.read_text().replace("Resource: !GetAtt TrainerRepository.Arn", "Resource: !GetAtt Nope.Arn")
    )
    bad = subprocess.run([BIN / "cfn-lint", broken], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "Nope" in bad.stdout


def test_the_bucket_is_versioned_encrypted_and_private() -> None:
    bucket = _template()["Resources"]["Bucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    policy = _template()["Resources"]["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in policy
    )


def test_the_training_role_has_least_privilege() -> None:
    resources = _template()["Resources"]
    role = resources["SageMakerTrainingRole"]
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    for name in ("SageMakerTrainingRole", "ControlPlanePolicy"):
        for statement in _statements(resources[name]):
            assert statement["Effect"] == "Allow"
            actions = _as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (name, statement)
            if (
                statement["Resource"] == "*"
            ):  # only for actions AWS cannot scope, each one conditioned or listed
                assert "Condition" in statement or actions in (["ecr:GetAuthorizationToken"],), (
                    name,
                    statement,
                )
    writes = [s for s in _statements(role) if "s3:PutObject" in _as_list(s["Action"])]
    targets = [str(r) for s in writes for r in _as_list(s["Resource"])]
    assert len(targets) == 2 and all(re.search(r"/(jobs|checkpoints)/\*", t) for t in targets), targets
    assert not any("s3:DeleteObject" in _as_list(s["Action"]) for s in _statements(role))
    pass_role = [s for s in _statements(resources["ControlPlanePolicy"]) if s["Action"] == "iam:PassRole"]
    assert (
        pass_role
        and pass_role[0]["Condition"]["StringEquals"]["iam:PassedToService"] == "sagemaker.amazonaws.com"
    )


@pytest.mark.e2e
def test_the_stack_deploys_on_moto(moto_endpoint: str, aws_env: None) -> None:
    cf = boto3.client("cloudformation", endpoint_url=moto_endpoint)
    cf.create_stack(
        StackName="loraops-infra-test",
        TemplateBody=TEMPLATE.read_text(),
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + 60
    while (stack := cf.describe_stacks(StackName="loraops-infra-test")["Stacks"][0])["StackStatus"].endswith(
        "IN_PROGRESS"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    bucket = outputs["BucketName"]
    assert (
        outputs["DvcRemoteUrl"] == f"s3://{bucket}/dvc"
        and outputs["JobsS3Prefix"] == f"s3://{bucket}/loraops"
    )
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert encryption["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    # (moto's CloudFormation does not apply VersioningConfiguration or the public access block:
    # test_the_bucket_is_versioned_encrypted_and_private checks them in the template)
    iam = boto3.client("iam", endpoint_url=moto_endpoint)
    role = iam.get_role(RoleName="loraops-sagemaker-training")["Role"]
    assert role["Arn"] == outputs["SageMakerRoleArn"]
    assert iam.list_role_policies(RoleName="loraops-sagemaker-training")["PolicyNames"] == [
        "loraops-training"
    ]
    assert (
        iam.get_policy(PolicyArn=outputs["ControlPlanePolicyArn"])["Policy"]["PolicyName"]
        == "loraops-control-plane"
    )
    repo = boto3.client("ecr", endpoint_url=moto_endpoint).describe_repositories(
        repositoryNames=["loraops-trainer"]
    )
    assert repo["repositories"][0]["imageTagMutability"] == "IMMUTABLE"
    assert outputs["TrainerRepositoryUri"] == repo["repositories"][0]["repositoryUri"]


def test_the_trainer_dockerfile_lints_copies_the_cuda_lock_and_names_the_entry_point() -> None:
    lint = subprocess.run([BIN / "hadolint", DOCKERFILE], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY (?:--\S+ )*(\S+(?: \S+)*) \S+$", text, flags=re.M)
    sources = [s for line in copies for s in line.split()]
    assert "infra/envs/trainer-cuda.lock.txt" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    train = ROOT / "infra" / "sagemaker" / "train"
    assert os.access(train, os.X_OK) and "python -m loraops.train.sagemaker_entry" in train.read_text()
    assert 'CMD ["train"]' in text
