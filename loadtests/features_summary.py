"""The printed summary of a features benchmark report (``loadtests.features``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.broker_floor import SLOT_S


def print_summary(report: dict[str, Any], out: Path) -> None:
    t, a, b, c = report["targets"], report["a_baseline"], report["b_system"], report["c_freshness"]
    print(f"(a) baseline raw aiokafka loop : {a['steady_events_per_s']:9.0f} events/s sustained"
          f" ({a['events_per_s']:.0f}/s whole run)")
    print(f"(b) ingestion+features->Redis  : {b['steady_events_per_s']:9.0f} events/s sustained"
          f" ({b['events_per_s']:.0f}/s whole run); (b)/(a) = {t['b_over_a_sustained']:.2f} sustained"
          f" (target >= 0.5: {'met' if t['b_over_a_met'] else 'MISSED'}), {t['b_over_a_whole_run']:.2f} whole run")
    if rounds := report.get("throughput_rounds"):
        print(f"    (b)/(a) sustained in each of {len(rounds)} rounds (the median one above): "
              + ", ".join(f"{r['b_over_a_sustained']:.2f}" for r in rounds))
    cpu = b["cpu_us_per_event"]
    print(f"    CPU us/event: baseline {a['cpu_us_per_event']:.0f} (+ broker {a['broker_cpu_us_per_event']:.0f});"
          f" ingestion {cpu['ingestion']:.0f}, features {cpu['features']:.0f}, broker {cpu['broker']:.0f},"
          f" redis {cpu['redis']:.0f}")
    print(f"(c) freshness at {c['rate_events_per_s']:.0f} ev/s (fresh broker; window cache"
          f" {c.get('features_state_cache_events', 'default')} events): p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms"
          f" (target p99 <= 50 ms: {'met' if t['freshness_met'] else 'MISSED'}; {c['samples']} samples,"
          f" backlog at end {c['backlog_at_end']})")
    f = report["c_broker_floor"]
    print(f"    per {SLOT_S:g} s [start, p50, p99]: {c['slots']}")
    print(f"    broker floor, raw two-hop relay at the same rate (fresh broker): p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms"
          f" (broker {f['broker_cores']:.2f} cores); per {SLOT_S:g} s: {f['slots']}")
    print("    CPU cores while producing: " + ", ".join(f"{n} {v:.2f}" for n, v in c["cpu_cores_while_producing"].items()))
    if (light := report["c_light_load"]) is not None:
        lf, lb = light["freshness"], light["broker_floor"]
        print(f"    light load, {lf['rate_events_per_s']:.0f} ev/s: p50 {lf['p50_ms']:.1f} ms, p99 {lf['p99_ms']:.1f} ms;"
              f" broker floor p50 {lb['p50_ms']:.1f} ms, p99 {lb['p99_ms']:.1f} ms")
    print(f"(d) features peak RSS          : {report['d_features_rss']['peak_kb'] / 1024:.1f} MB")
    if (long := report["d_features_rss"]["long_run"]) is not None:
        print(f"    {long['minutes']:g} min over {long['entities']} entities: RSS {long['rss_kb_second_minute_median'] / 1024:.1f}"
              f" MB (2nd minute) -> {long['rss_kb_last_minute_median'] / 1024:.1f} MB (last minute),"
              f" growth {long['growth']:+.1%}: {'flat' if long['flat'] else 'NOT flat'}; p99 {long['freshness']['p99_ms']:.0f} ms")
    print(f"report: {out}")
