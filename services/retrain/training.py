"""One training, from its window to its acked model events, and the spare trainer children.

The controller (:mod:`services.retrain.app`) owns the state and decides when to train; a
training reads that state and reports through the controller (:class:`Host`): decision
steps on ``retrain.decisions``, then ``registered``/``promoted`` or ``rejected`` on
``models``, published until acked and folded in at once so the next version number is
right before ``models`` is read back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from services.retrain import decisions as rd
from services.retrain import policy, rows, trainer
from services.retrain import handlers as h
from services.retrain.settings import RetrainSettings
from shared import codec
from shared.contracts import ModelEvent, RetrainDecision
from shared.kafka import Out, publish
from shared.spec import UseCaseSpec
from shared.topics import MODELS

log = logging.getLogger(__name__)


class Host(Protocol):
    """What a training needs of the controller."""

    settings: RetrainSettings
    spec: UseCaseSpec
    state: h.ControllerState
    buffer: rows.LabeledBuffer
    producer: AIOKafkaProducer | None
    code_version: str
    spares: Spares

    def emit(self, rec: RetrainDecision) -> None: ...
    async def flush(self) -> None: ...
    def on_model_event(self, ev: ModelEvent) -> None: ...


class Spares:
    """Trainer children started ahead (importing River takes seconds on a loaded machine;
    two cover back-to-back trainings and a preemption)."""

    def __init__(self, spec_path: Path, hash_seed: int, count: int) -> None:
        self.spec_path, self.hash_seed, self.count = spec_path, hash_seed, count
        self.procs: list[asyncio.subprocess.Process] = []  # oldest first

    async def fill(self) -> None:
        self.procs = [p for p in self.procs if p.returncode is None]
        while len(self.procs) < self.count:
            try:
                self.procs.append(await trainer.spawn(self.spec_path, self.hash_seed))
            except OSError:
                log.exception("could not start a spare trainer child; the next training starts its own")
                return

    def take(self) -> asyncio.subprocess.Process | None:
        """The oldest live spare (the most likely to have finished importing)."""
        self.procs = [p for p in self.procs if p.returncode is None]
        return self.procs.pop(0) if self.procs else None

    async def discard_all(self) -> None:
        for proc in self.procs:
            await trainer.discard(proc)
        self.procs = []


async def train_and_publish(host: Host, trigger: h.Trigger, waited_out: bool) -> None:
    s, spec = host.settings, host.spec
    plan = policy.plan_window(host.buffer.eligible(None), trigger, host.state, spec)
    if waited_out:
        plan.notes.insert(0, f"waited {spec.retrain.change_point_max_wait:.0f}s for labels after the change point")
    host.emit(rd.step("train", trigger, time.time(), code=plan.basis, policy=plan.mode, window=plan.window(),
                      message=_plan_message(trigger, plan)))
    champion = host.state.promoted.get(trigger.champion) if trigger.champion else None
    job = trainer.make_job(plan.train, plan.holdout, champion, s.model_secret.get_secret_value(),
                           spec.model.threshold, plan.replay, plan.parent, spec.monitoring.slices,
                           plan.half_life)
    host.emit(rd.step("started", trigger, time.time(), policy=plan.mode, progress=0.0,
                      message=f"training worker started for v{trigger.version}"))
    await host.flush()
    result: dict[str, Any] | str
    try:
        # The spare is replaced once this training is over (the controller's ``train``), not
        # now: an interpreter importing River beside it would slow the very training a drift
        # incident waits for; a second spare covers a back-to-back trigger meanwhile.
        result = await trainer.run_in_child(job, s.spec, s.retrain_hash_seed, s.retrain_timeout_s,
                                            on_progress=lambda e, n: _progress(host, trigger, e, n),
                                            proc=host.spares.take())
        host.emit(rd.step("finished", trigger, time.time(), policy=plan.mode, progress=1.0,
                          message=f"artifact sha256 {result['sha256']}", metrics=result["metrics"]))
    except Exception as exc:
        log.error("training for %s failed: %s", trigger.label, exc, exc_info=not isinstance(
            exc, trainer.TrainingFailed))
        result = f"training failed: {str(exc)[:300]}"
        host.emit(rd.step("failed", trigger, time.time(), code="training_failed", message=result))
    await publish_outcome(host, trigger, result, plan)


def _plan_message(trigger: h.Trigger, plan: policy.Plan) -> str:
    return (f"v{trigger.version}: {plan.mode} on {len(plan.train)} rows ({plan.basis}), "
            f"{len(plan.holdout)} holdout, {len(plan.replay)} replay"
            + (f", recency-weighted (half-life {plan.half_life} rows)" if plan.half_life else "")
            + (f"; {'; '.join(plan.notes)}" if plan.notes else ""))


async def _progress(host: Host, trigger: h.Trigger, epoch: int, epochs: int) -> None:
    host.emit(rd.step("progress", trigger, time.time(), progress=epoch / epochs, part=epoch,
                      message=f"epoch {epoch}/{epochs}"))
    await host.flush()


def outcome_events(host: Host, trigger: h.Trigger, result: dict[str, Any] | str,
                   plan: policy.Plan) -> list[ModelEvent]:
    """``result`` is the trainer's answer, or the reason training failed."""
    now, window, st = time.time(), plan.window(), host.state
    version = trigger.version if trigger.version and trigger.version > st.max_version else st.max_version + 1
    trigger.version = version
    lineage = policy.lineage(plan, host.spec, host.code_version, result if isinstance(result, dict) else None)
    if isinstance(result, str):
        return [h.failure_event(trigger, version, trigger.champion, result, window, now, lineage)]
    if st.champion != trigger.champion:
        reason = f"champion changed during training (v{trigger.champion} -> v{st.champion})"
        host.emit(rd.step("rejected", trigger, now, code="champion_changed", message=reason, reasons=(reason,)))
        return [h.failure_event(trigger, version, trigger.champion, reason, window, now, lineage)]
    passed, reasons, summary = policy.judge(result, host.spec)
    reason = f"{'passed' if passed else 'rejected'}: {summary}; champion scored as {result['champion_source']}"
    if reasons:
        reason += "; failed: " + " | ".join(reasons)
    lineage["reasons"] = tuple(reasons)
    strategy = "shadow" if passed and host.spec.rollout.enabled else None
    host.emit(rd.step("passed" if passed else "rejected", trigger, now, code="gate", message=reason,
                      policy=plan.mode, metrics=policy.finite_metrics(result["metrics"]), reasons=tuple(reasons)))
    log.info("v%d for %s %s", version, trigger.label, reason)
    return h.model_events(result, trigger, version, trigger.champion, passed, reason, window,
                          host.spec.model.threshold, now, lineage, strategy)


async def publish_outcome(host: Host, trigger: h.Trigger, result: dict[str, Any] | str,
                          plan: policy.Plan) -> None:
    """Publish until acked (retrying), then fold the events in at once so the next
    version number is right even before ``models`` is read back."""
    events = outcome_events(host, trigger, result, plan)
    trigger.closed = True  # from here on, new triggers wait for the next training
    outs = [Out(MODELS.name, codec.dumps(e.model_dump(mode="json")), str(e.version).encode())
            for e in events]
    while True:
        try:
            assert host.producer is not None
            await publish(host.producer, outs)
            break
        except Exception:
            log.exception("publishing v%d failed; retrying", events[0].version)
            await asyncio.sleep(host.settings.retrain_publish_retry_s)
    for ev in events:
        host.on_model_event(ev)
    await host.flush()
    log.info("published %s for v%d (trigger %s)", "+".join(e.event for e in events),
             events[0].version, trigger.label)
