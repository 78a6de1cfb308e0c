"""Accuracy-over-time plot of a concept benchmark report (matplotlib, Agg: no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"static": "#999999", "online_hat": "#1f77b4", "online_arf": "#17becf", "rivulet": "#d62728"}
LABELS = {"static": "(a) static (champion at the change, frozen)", "online_hat": "(b) River HAT, online",
          "online_arf": "(b) River ARF, online", "rivulet": "(c) Rivulet closed loop (/predict answers)"}


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """One panel per stream; None (and a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return None
    streams = report["streams"]
    fig, axes = plt.subplots(len(streams), 1, figsize=(11, 3.6 * len(streams)), squeeze=False)
    for ax, (name, st) in zip(axes[:, 0], streams.items()):
        series, step = st["series"], st["series_step"]
        for key, values in series.items():
            xs = [step * (i + 1) for i, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            ax.plot(xs, ys, label=LABELS.get(key, key), color=COLOURS.get(key), lw=1.4 if key == "rivulet" else 1.0)
        start, end = st["transition"]
        ax.axvspan(start, max(end, start + 1), color="orange", alpha=0.25, label="concept change")
        for swap in st.get("swaps", []):
            ax.axvline(swap["index"], color="#d62728", ls=":", lw=0.8)
        for inc in st.get("incidents", []):
            if inc.get("first_served_index") is not None:
                ax.annotate(f"v{inc['promoted_version']}", (inc["first_served_index"], 0.42), fontsize=7, color="#d62728")
        ax.set_ylim(0.4, 1.01)
        ax.set_title(f"{name}: {st['description']} (window {st['window']}, labels {st['label_delay_events']} events late)",
                     fontsize=9)
        ax.set_ylabel("prequential accuracy")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("event index (dotted: a new model version starts answering)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
