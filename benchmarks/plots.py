"""PNG plots of a results.json, for readers who would rather look than read tables."""

from pathlib import Path

COLORS = {"fastpause": "#d62728", "nginx": "#2ca02c", "haproxy": "#1f77b4", "caddy": "#9467bd"}
LABELS = {"fastpause": "fastpause", "nginx": "NGINX", "haproxy": "HAProxy", "caddy": "Caddy"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_all(results: dict, outdir: Path) -> list[str]:
    written = []
    for make in (throughput_bars, hold_plot, swap_plots):
        try:
            written += make(results, outdir)
        except ImportError:
            return written  # matplotlib missing: tables only
    return written


def throughput_bars(results: dict, outdir: Path) -> list[str]:
    summary = results.get("throughput")
    if not summary:
        return []
    plt = _plt()
    scenarios = list(summary)
    proxies = [p for p in LABELS if any(p in summary[s] for s in scenarios)]
    panels = [
        ("cpu_us_per_request", "CPU µs per proxied request (lower is better)", 1.0, True),
        ("rps", "requests/s (higher is better)", 1.0, False),
        ("p99", "p99 latency, ms (lower is better)", 1e3, False),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 11))
    width = 0.8 / len(proxies)
    for ax, (key, title, scale, log) in zip(axes, panels, strict=True):
        for i, proxy in enumerate(proxies):
            xs = [j + (i - (len(proxies) - 1) / 2) * width for j in range(len(scenarios))]
            ys = [summary[s].get(proxy, {}).get(key, 0) * scale for s in scenarios]
            bars = ax.bar(xs, ys, width, label=LABELS[proxy], color=COLORS[proxy])
            if key == "cpu_us_per_request":
                ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=4, loc="upper left")
    fig.suptitle(
        "Throughput scenarios: medians of interleaved rounds "
        "(small/16k/1m body; ka = keep-alive, close = new connection per request)"
    )
    fig.tight_layout()
    path = outdir / "throughput.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path.name]


def hold_plot(results: dict, outdir: Path) -> list[str]:
    hold = results.get("hold")
    if not hold:
        return []
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = list(hold)
    colors = ["#d62728", "#ff7f0e", "#9467bd"]
    values = [hold[k]["rss_per_held"] / 1024 for k in kinds]
    bars = left.bar(kinds, values, color=colors[: len(kinds)])
    left.bar_label(bars, fmt="%.1f KiB")
    left.set_title(f"RSS growth per held request ({hold[kinds[0]]['count']:,} held)")
    left.set_ylabel("KiB per held request")
    for kind, color in zip(kinds, colors, strict=False):
        curve = list(hold[kind]["release_curve"])
        if not curve:
            continue
        if hold[kind]["last"] is not None and hold[kind]["last"] > curve[-1]:
            curve.append(hold[kind]["last"])  # the sampled curve may miss the very last answer
        n = hold[kind]["answered"]
        fractions = [(i + 1) / len(curve) for i in range(len(curve))]
        right.step(
            [t * 1e3 for t in curve],
            [f * n for f in fractions],
            where="post",
            label=kind,
            color=color,
        )
    right.set_xlabel("ms after release (resume sent / backend accepting)")
    right.set_ylabel("held requests answered")
    right.set_title("Release: answers over time")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    path = outdir / "hold.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path.name]


def swap_plots(results: dict, outdir: Path) -> list[str]:
    swaps = {
        k: v
        for k, v in results.get("swap", {}).items()
        if v.get("available") and not v.get("error")
    }
    if not swaps:
        return []
    plt = _plt()
    written = []
    for kind, kinds in (("restart", ("restart",)), ("reload", ("reload", "deploy"))):
        rows = {k: v for k, v in swaps.items() if v["kind"] in kinds}
        if not rows:
            continue
        fig, axes = plt.subplots(
            len(rows), 1, figsize=(11, 2.8 * len(rows) + 0.6), sharex=True, squeeze=False
        )
        for ax, (variant, row) in zip(axes[:, 0], rows.items(), strict=True):
            buckets = {round(t * 10): (ok, other) for t, ok, other in row["buckets"]}
            if buckets:
                lo, hi = min(buckets), max(buckets)
                ts = [b / 10 for b in range(lo, hi + 1)]
                ok = [buckets.get(b, (0, 0))[0] * 10 for b in range(lo, hi + 1)]
                bad = [buckets.get(b, (0, 0))[1] * 10 for b in range(lo, hi + 1)]
                ax.fill_between(
                    ts,
                    ok,
                    step="post",
                    alpha=0.35,
                    color=COLORS.get(row["proxy"], "grey"),
                    label="2xx/3xx per s",
                )
                if any(bad):
                    ax.step(ts, bad, where="post", color="black", label="non-2xx per s")
            ax.set_ylabel("responses/s")
            twin = ax.twinx()
            probe = [(t, lat * 1e3) for t, lat, st in row["probe"] if st and st < 400]
            fails = [(t, lat * 1e3) for t, lat, st in row["probe"] if not st or st >= 400]
            if probe:
                twin.plot(
                    *zip(*probe, strict=True),
                    ".",
                    ms=3,
                    color="#333333",
                    label="probe latency (ms)",
                )
            if fails:
                twin.plot(
                    *zip(*fails, strict=True), "x", ms=6, color="red", label="probe error / non-2xx"
                )
            twin.set_yscale("log")
            twin.set_ylabel("probe latency, ms")
            for t, what in row["events"]:
                ax.axvline(t, color="grey", ls=":", lw=1)
                ax.annotate(
                    what,
                    (t, ax.get_ylim()[1] * 0.92),
                    fontsize=7,
                    rotation=90,
                    va="top",
                    ha="right",
                    color="#555555",
                )
            ax.set_title(
                f"{variant}: {row['how']} - non-2xx {row['non2xx']}, socket errors "
                f"{row['socket_errors']}, wrk p99 {row['p99'] * 1e3:.0f} ms",
                fontsize=9,
            )
            ax.legend(loc="lower left", fontsize=7)
            twin.legend(loc="lower right", fontsize=7)
        axes[-1, 0].set_xlabel("seconds since wrk started")
        fig.suptitle(f"Backend {kind} under wrk load (keep-alive, 64 connections)")
        fig.tight_layout()
        path = outdir / f"swap-{kind}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path.name)
    return written
