"""The on-disk model registry: a materialized view of the ``models`` topic.

Layout under ``<data_dir>/registry/``::

    v{version}.json          metadata of one version (the latest event about it, without
                             the artifact bytes) + ``status`` + ``history`` of its events
    artifacts/{sha256}.pkl   the signed artifact bytes (content-addressed)
    champion.json            {"version": n, "since": created_at} of the serving version
    status.json              the controller's latest decision (pending/waiting/training)

Every write is atomic (temp file + rename). Recording the same event twice is a no-op,
so the controller can rebuild the registry by replaying ``models`` from the beginning.
``list_versions``/``show_version`` are what the CLI calls.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from services.retrain.handlers import becomes_champion
from shared.contracts import ModelEvent


def registry_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "registry"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def record(data_dir: Path, ev: ModelEvent) -> None:
    """Fold one ``models`` event into the registry (idempotent)."""
    root = registry_dir(data_dir)
    if ev.artifact_b64 and ev.artifact_sha256:
        art = root / "artifacts" / f"{ev.artifact_sha256}.pkl"
        if not art.exists():
            _atomic_write(art, base64.b64decode(ev.artifact_b64))
    path = root / f"v{ev.version}.json"
    meta: dict[str, Any] = _read_json(path) or {"version": ev.version, "history": []}
    entry = {"event": ev.event, "created_at": ev.created_at, "trigger": ev.trigger, "reason": ev.reason,
             "who": ev.who, "strategy": ev.strategy}
    if entry in meta["history"]:
        return
    meta["history"].append(entry)
    # Immutable: the first event that says something about a field fixes it (a later CLI
    # promotion or a rollback adds history, it does not rewrite trigger, parent or lineage).
    fields = ev.model_dump(mode="json", exclude={"artifact_b64", "event"}, exclude_defaults=True)
    for key, value in fields.items():
        if value not in (None, "", {}, [], ()) and key not in meta:
            meta[key] = value
    meta["status"] = ev.event
    _write_json(path, meta)
    if becomes_champion(ev):
        _write_json(root / "champion.json", {"version": ev.version, "since": ev.created_at})


def write_status(data_dir: Path, status: dict[str, Any]) -> None:
    _write_json(registry_dir(data_dir) / "status.json", status)


def champion(data_dir: Path) -> int:
    found = _read_json(registry_dir(data_dir) / "champion.json")
    return int(found["version"]) if found else 0


def list_versions(data_dir: Path) -> list[dict[str, Any]]:
    """One summary per version, oldest first (no profiles, no artifacts)."""
    root = registry_dir(data_dir)
    serving = champion(data_dir)
    out = []
    for path in root.glob("v*.json"):
        meta = _read_json(path)
        if not meta:
            continue
        out.append({
            "version": meta["version"], "status": meta.get("status"), "parent": meta.get("parent"),
            "created_at": meta.get("created_at"), "trigger": meta.get("trigger", ""),
            "metrics": meta.get("metrics", {}), "champion": meta["version"] == serving,
            "policy": meta.get("policy"), "trained_on": meta.get("trained_on"),
            "artifact_sha256": meta.get("artifact_sha256"),
        })
    return sorted(out, key=lambda m: m["version"])


def show_version(data_dir: Path, version: int) -> dict[str, Any] | None:
    """The full metadata of one version (None if unknown)."""
    meta = _read_json(registry_dir(data_dir) / f"v{version}.json")
    if meta is None:
        return None
    meta["champion"] = version == champion(data_dir)
    return meta


def artifact_path(data_dir: Path, sha256: str) -> Path:
    return registry_dir(data_dir) / "artifacts" / f"{sha256}.pkl"
