#!/usr/bin/env python3
"""Plots the samples of `sessiond-bench soak` (tests/soak/run draws docs/soak/soak.png).

Usage: tests/soak/plot.py SOAK.csv OUT.png

Four stacked panels against elapsed minutes: the daemon's RSS (MiB) with the least-squares
line over the second half of the run (the drift the soak reports), its open file descriptors
(and threads), the request latency p50/p99 (ms) per sample interval, and the operations per
second. Intervals in which validations were answered in degraded mode are shaded red.
Needs matplotlib (`pip install matplotlib`).
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def slope(xs, ys):
    """Least-squares (slope, intercept), or None with fewer than two distinct x."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return b, my - b * mx


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{src}: no samples")
    col = lambda name: [num(r.get(name)) for r in rows]  # noqa: E731
    t_s = col("elapsed_s")
    minutes = [t / 60 for t in t_s]
    rss_mib = [v / 1024 for v in col("rss_kib")]
    fds = col("open_fds")
    threads = col("threads")
    p50, p99 = col("p50_ms"), col("p99_ms")
    # ops is per interval: divide by the interval's length.
    prev = [0.0] + t_s[:-1]
    ops_s = [o / (t - p) if t > p else float("nan") for o, t, p in zip(col("ops"), t_s, prev)]
    errors = sum(v for v in col("errors") if v == v)

    fig, ax = plt.subplots(4, 1, figsize=(12, 10), dpi=100, sharex=True)
    span = t_s[-1]
    half = [(m, r) for m, r, t in zip(minutes, rss_mib, t_s) if t >= span / 2]
    ax[0].plot(minutes, rss_mib, lw=1.2, label="RSS")
    fit = slope([h[0] for h in half], [h[1] for h in half])
    if fit:
        b, a = fit
        xs = [half[0][0], half[-1][0]]
        ax[0].plot(xs, [a + b * x for x in xs], "r--", lw=1.5,
                   label=f"second-half fit: {b * 60 * 1024:+.0f} KiB/h")
    ax[0].set_ylabel("RSS (MiB)")
    ax[0].legend(loc="lower right")

    ax[1].plot(minutes, fds, lw=1.2, color="tab:green", label="open fds")
    ax[1].set_ylabel("open fds")
    twin = ax[1].twinx()
    twin.plot(minutes, threads, lw=1, color="tab:gray", ls=":", label="threads")
    twin.set_ylabel("threads")
    lines = ax[1].get_lines() + twin.get_lines()
    ax[1].legend(lines, [l.get_label() for l in lines], loc="lower right")

    ax[2].plot(minutes, p50, lw=1, label="p50")
    ax[2].plot(minutes, p99, lw=1, label="p99")
    ax[2].set_ylabel("latency (ms)")
    ax[2].set_yscale("log")
    ax[2].legend(loc="upper right")

    ax[3].plot(minutes, ops_s, lw=1, color="tab:purple")
    ax[3].set_ylabel("ops/s")
    ax[3].set_xlabel("elapsed (minutes)")
    ax[3].set_ylim(bottom=0)

    # Intervals with validations answered in degraded mode (Redis slow or unreachable).
    degraded = col("degraded") if "degraded" in rows[0] else []
    for d, t, p in zip(degraded, t_s, prev):
        if d > 0:
            for a in ax:
                a.axvspan(p / 60, t / 60, color="tab:red", alpha=0.12, lw=0)
    for a in ax:
        a.grid(True, alpha=0.3)
    n_degraded = int(sum(d for d in degraded if d == d))
    fig.suptitle(f"sessiond soak: {len(rows)} samples over {span / 60:.1f} min, "
                 f"{int(errors)} errors, {n_degraded} degraded answers (red: intervals with "
                 f"any) ({src})")
    fig.tight_layout()
    fig.savefig(out)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
