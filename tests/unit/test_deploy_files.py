"""docker-compose.yml cannot run here (no Docker engine); keep it valid and in sync."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared.supervisor import SERVICES

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_every_service_on_kafka_and_redis() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("kafka", "redis", "serving"):
        assert "healthcheck" in services[name], name
    for name in SERVICES:
        command = services[name]["command"]
        assert command[:3] == ["python", "-m", f"services.{name}"], name
        assert (ROOT / "services" / name / "__main__.py").exists(), name
        env = services[name]["environment"]
        assert env["RIVULET_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["RIVULET_KAFKA_IDEMPOTENCE"] == "true"
        assert all(k.startswith("RIVULET_") for k in env), name


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "python3 run.py test" in ci and "python3 run.py test" in readme
    assert "python3 run.py demo" in readme
