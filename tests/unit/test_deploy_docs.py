"""The deployment manifests in docs/deploy/ parse and say what docs/deploy.md says."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from procflow.store import keys

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


def test_keda_scales_on_a_waiting_list_and_on_the_queue_depth_metric() -> None:
    (scaled,) = load("keda-scaledobject.yaml")
    assert scaled["kind"] == "ScaledObject"
    redis_trigger, prom_trigger = scaled["spec"]["triggers"]  # type: ignore[index]
    queue = redis_trigger["metadata"]["listName"].split(":")[1]
    assert redis_trigger["metadata"]["listName"] == keys.waiting(queue)
    assert re.search(r"procflow_queue_jobs\{.*state=\"waiting\"", prom_trigger["metadata"]["query"])
