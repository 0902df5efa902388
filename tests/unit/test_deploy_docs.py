"""The deployment manifests in docs/deploy/ parse and say what docs/deploy.md says."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"


def load(name: str) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_the_supervisor_deployment_drains_within_its_grace_period() -> None:
    (deployment,) = load("supervisor-deployment.yaml")
    assert deployment["kind"] == "Deployment"
    spec = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    command = spec["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "procflow.supervisor"]
    drain = float(command[command.index("--drain-timeout") + 1])
    assert spec["terminationGracePeriodSeconds"] > drain
    assert "--metrics-port" in command


def test_keda_scales_on_the_backlog_in_work_seconds_and_scales_in_slowly() -> None:
    (scaled,) = load("keda-scaledobject.yaml")
    assert scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    (trigger,) = spec["triggers"]  # type: ignore[index]
    assert trigger["type"] == "prometheus"
    assert re.fullmatch(
        r"max\(procflow_stage_backlog_seconds\{.*queue=\"\w+\".*\}\)", trigger["metadata"]["query"]
    )
    assert float(trigger["metadata"]["threshold"]) > 0
    assert spec["minReplicaCount"] >= 1  # type: ignore[index]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]  # type: ignore[index]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0
