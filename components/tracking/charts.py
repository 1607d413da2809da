"""The charts logged into MLflow runs (PNG, matplotlib's headless Agg backend): slice pass rates with their
confidence intervals against the champion's baseline, and a fine-tune's loss curve."""

from __future__ import annotations

from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import in a fresh process
    import matplotlib.pyplot as plt

    return plt


def slice_chart(slices: dict[str, dict], baseline: dict[str, dict] | None, title: str) -> Any:
    """Grouped bars: this evaluation's pass rate per slice (with its interval) beside the baseline's."""
    plt = _pyplot()
    names = sorted(slices)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.38 if baseline else 0.6
    xs = list(range(len(names)))
    rates = [slices[n]["pass_rate"] for n in names]
    errors = [[r - slices[n]["ci_low"] for n, r in zip(names, rates, strict=True)],
              [slices[n]["ci_high"] - r for n, r in zip(names, rates, strict=True)]]  # fmt: skip
    offset = width / 2 if baseline else 0.0
    ax.bar([x + offset for x in xs], rates, width, yerr=errors, capsize=4, color="#1f77b4", label="this run")
    if baseline:
        base = [baseline.get(n, {}).get("pass_rate", 0.0) for n in names]
        ax.bar([x - offset for x in xs], base, width, color="#bbbbbb", label="champion baseline")
    for x, r, n in zip(xs, rates, names, strict=True):
        ax.annotate(f"{r:.2f}\nn={slices[n]['n']}", (x + offset, min(r, 0.88)), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 14), textcoords="offset points")  # fmt: skip
    ax.set_xticks(xs, names)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("pass rate")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def loss_chart(losses: list[float], title: str) -> Any:
    """Per-step training loss and a moving average over ~5 % of the steps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, color="#9ecae1", linewidth=0.8, label="loss per step")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                  for i in range(len(losses))]  # fmt: skip
        ax.plot(steps, smooth, color="#08519c", linewidth=1.6, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def close(fig: Any) -> None:
    _pyplot().close(fig)
