"""The online-store key layout. Every Redis key Rivulet writes is built here.

All keys start with ``rv:``. ``{fs}`` is the spec name plus feature-set version
(e.g. ``card_fraud:v1``), so a spec change never mixes old and new values.

=================================  ======  =====================================================
key                                type    contents
=================================  ======  =====================================================
``rv:{fs}:f:{entity}``             hash    online features of one entity: one field per feature
                                           (JSON numbers as strings), plus ``_event_time`` (event
                                           time of the last applied event) and ``_written_at``
                                           (wall time of the write, Redis' clock). TTL = ``entity_ttl``.
                                           /predict reads it in one round trip (a Lua
                                           script returning the hashes as JSON).
``rv:{fs}:wh:{entity}``            hash    the entity's window: event_id -> JSON of the (slim)
                                           event, for the events still inside the longest window
                                           (+ allowed lateness). Written incrementally (HSET the
                                           new events, HDEL the expired ones) by the same Lua
                                           script as the features and offsets. TTL = ``entity_ttl``.
``rv:{fs}:w:{entity}``             string  window buffer of the first features service (JSON list);
                                           no longer written.
``rv:{fs}:offsets:{group}``        hash    partition -> last offset of ``events.valid`` applied to
                                           Redis; written in the same Lua script as the features
                                           (which first checks them: compare-and-set), so a
                                           redelivered event is skipped (exactly-once effect).
``rv:join:p:{prediction_id}``      string  label join: the prediction record waiting for a label.
``rv:join:l:{prediction_id}``      string  label join: the latest label (waits there if it arrived first).
``rv:join:done:{prediction_id}``   string  label join: last emitted revision and label value, JSON
                                           ``{"revision": n, "actual": v}`` (dedupe; a label with a
                                           different value is a correction, revision n + 1).
                                           Written BEFORE the output is published (with the
                                           pending entry below). ``{"revision": 0, ...}`` = the
                                           maturity window closed without a label (missing).
``rv:join:deadlines``              zset    label ledger expiry: member ``p:{id}`` (prediction
                                           waiting for its label, score = arrival + maturity)
                                           or ``l:{id}`` (label waiting for its prediction, score
                                           = arrival + unmatched grace). Scanned periodically
                                           with ZRANGEBYSCORE; an expired member is CLAIMED in a
                                           Lua script (score moved to now + lease) so one instance
                                           publishes it, then ZREM'd after the broker ack.
                                           Why not keyspace notifications: they are fire-and-
                                           forget (lost while no subscriber listens).
``rv:join:claims``                 hash    label ledger: member -> payload of a claimed expiry,
                                           kept until published (a crash re-claims after the lease).
``rv:join:pending:{topic}:{part}`` hash    label ledger: prediction id -> planned output (bytes,
                                           output partition, lower bound of its offset) for the
                                           batch of that input partition being published; empty
                                           after the acks. Left over after a crash: reconciled
                                           against ``predictions.labeled`` before the partition is
                                           consumed again (publish only what is not there).
``rv:drift:cool:{model}:{kind}:{feature}``  string  drift alert cool-down marker of the v1 service
                                           (no longer written: cool-downs live in the incident).
``rv:drift:incidents``             hash    drift: model version -> JSON incident tracker (the open
                                           incident, last resolution time, last window end), so a
                                           restart neither re-opens nor forgets an incident.
``rv:drift:state:{model}``         hash    drift: latest evaluation of a model version, one field
                                           per test (``{feature or -}|{test}`` -> JSON: kind,
                                           statistic, p_value, threshold, critical, effects, window,
                                           drifted, evaluated_at) plus ``_meta`` (JSON: window, step,
                                           per-test threshold, open incident). Read by
                                           ``rivulet drift report``.
``rv:drift:selfref``               hash    drift: model version -> JSON reference profile built
                                           from its own first predictions (versions announced
                                           without a profile, e.g. the baseline v0).
=================================  ======  =====================================================
"""

from __future__ import annotations

from shared.spec import UseCaseSpec

PREFIX = "rv"
EVENT_TIME_FIELD = "_event_time"
WRITTEN_AT_FIELD = "_written_at"


def feature_set(spec: UseCaseSpec) -> str:
    return f"{spec.name}:v{spec.feature_set_version}"


def features(spec: UseCaseSpec, entity_id: str) -> str:
    return f"{PREFIX}:{feature_set(spec)}:f:{entity_id}"


def window_events(spec: UseCaseSpec, entity_id: str) -> str:
    return f"{PREFIX}:{feature_set(spec)}:wh:{entity_id}"


def applied_offsets(spec: UseCaseSpec, group: str) -> str:
    return f"{PREFIX}:{feature_set(spec)}:offsets:{group}"


def join_prediction(prediction_id: str) -> str:
    return f"{PREFIX}:join:p:{prediction_id}"


def join_label(prediction_id: str) -> str:
    return f"{PREFIX}:join:l:{prediction_id}"


def join_done(prediction_id: str) -> str:
    return f"{PREFIX}:join:done:{prediction_id}"


def join_deadlines() -> str:
    return f"{PREFIX}:join:deadlines"


def join_claims() -> str:
    return f"{PREFIX}:join:claims"


def join_pending(topic: str, partition: int) -> str:
    return f"{PREFIX}:join:pending:{topic}:{partition}"


def drift_cooldown(model_version: int, kind: str, feature: str | None) -> str:
    return f"{PREFIX}:drift:cool:{model_version}:{kind}:{feature or '-'}"


def drift_self_references() -> str:
    return f"{PREFIX}:drift:selfref"


def drift_incidents() -> str:
    return f"{PREFIX}:drift:incidents"


def drift_state(model_version: int) -> str:
    return f"{PREFIX}:drift:state:{model_version}"


def drift_state_pattern() -> str:
    return f"{PREFIX}:drift:state:*"
