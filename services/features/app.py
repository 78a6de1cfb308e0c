"""Features service (faust): the streaming engine of the online features.

Consumes ``events.valid`` (raw bytes; decoded and type-checked here, invalid records are
logged and skipped) in batches. Stores, per entity, in Redis: the window events
(``rv:{fs}:wh:{entity}``) and the feature hash (``rv:{fs}:f:{entity}``) that serving reads,
plus the applied offset of every partition (``rv:{fs}:offsets:{group}``), all written by
one Lua script per batch (a compare-and-set on the offsets). Keeps recently used windows
in a bounded in-process cache, dropped on every assignment. Produces ``events.late``:
events later than the allowed lateness, original bytes + reason headers (acked before
the batch's Redis write, so none is lost).

Features are computed by the definition batch code uses
(``services.features.handlers.compute_features``; large windows' aggregates kept running,
equal by test: see :mod:`services.features.windows`). Exactly-once effect: Redis offsets make any redelivery a no-op, and on
every partition assignment the consumer resumes right after the offset Redis says was
applied (not at faust's commit, which may lag, or run ahead of Redis).

Why no agent/Stream: faust's per-message path (Conductor -> channel queue -> Stream ->
Event, a task and an ack per message) cost more CPU than the features themselves and made
batches tiny. The app is still a faust app (worker, consumer group, rebalances, periodic
commits); its consumer (:mod:`services.features.consumer`) hands every fetched batch to
the :class:`~services.features.applier.Applier` and acks its offsets once Redis has them.
The topic is subscribed through ``app.topics`` (faust's Conductor) with no channel on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from services.features.consumer import Transport
from services.features.settings import FeaturesSettings
from shared.kafka import ensure_topics
from shared.runtime import setup_logging, tune_gc
from shared.topics import EVENTS_VALID


class _FeaturesApp(faust.App):
    """faust.App with the batch-draining, resume-from-Redis consumer; carries the settings."""

    rivulet_settings: FeaturesSettings

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


def create_app(settings: FeaturesSettings) -> faust.App:
    """The faust app subscribed to events.valid. ``env={}``: faust must not read unprefixed env vars."""
    settings.use_case  # noqa: B018 - load and validate the spec now, not at the first batch
    app = _FeaturesApp(
        settings.group_id,
        env={},
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        datadir=str(settings.data_dir / "features"),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=EVENTS_VALID.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
    )
    app.rivulet_settings = settings
    app.topics.add(app.topic(
        EVENTS_VALID.name, partitions=EVENTS_VALID.partitions, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    ))
    return app


class _Worker(faust.Worker):
    """faust's worker, logging in the house format, without the terminal spinner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        setup_logging("features", logging.getLevelName(level))


def main() -> None:
    """Ensure topics, then run the faust worker until SIGINT/SIGTERM (handled by the worker)."""
    settings = FeaturesSettings()
    setup_logging("features", settings.log_level)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings.kafka_bootstrap))
    (settings.data_dir / "features").mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    worker = _Worker(app, loop=loop, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    tune_gc()
    worker.execute_from_commandline()
