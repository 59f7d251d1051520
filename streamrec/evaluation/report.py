"""The outputs of `streamrec evaluate`: JSON report, Markdown summary, PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

SYSTEM_NAMES = {
    "funnel": "streamrec funnel",
    "most_popular": "most popular so far",
    "item_covisitation": "item co-visitation (last items)",
}


def markdown(report: dict[str, Any]) -> str:
    """A human summary of a report."""
    cutoffs = sorted({int(k.split("@")[1]) for k in report["metrics"]["funnel"]["all"]})
    lines = [
        "# streamrec evaluate",
        "",
        f"{report['events']:,} events read, {report['evaluated']:,} evaluated "
        f"({report['warm_evaluated']:,} from warm users), warm-up {report['warmup']:,}, "
        f"{'excluding' if report['exclude_seen'] else 'allowing'} already-seen items, "
        f"seed {report['seed']}.",
        "",
    ]
    header = ["system", "users"] + [f"{m}@{k}" for k in cutoffs for m in ("HR", "MRR", "NDCG")]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, groups in report["metrics"].items():
        for group in ("all", "warm"):
            values = groups[group]
            cells = [f"{values[f'{m}@{k}']:.4f}" for k in cutoffs for m in ("hr", "mrr", "ndcg")]
            lines.append(
                f"| {SYSTEM_NAMES.get(name, name)} | {group} | " + " | ".join(cells) + " |"
            )
    lines += ["", "Per-source recall (the target was among the source's candidates):", ""]
    lines += [f"- `{s}`: {v:.4f}" for s, v in report["source_recall"].items()]
    lines += ["", "Removed per filter (over all requests):", ""]
    lines += [f"- `{f}`: {v:,}" for f, v in report["filters_removed"].items()]
    lines += [
        "",
        f"Catalog coverage {report['coverage']:.4f}, novelty {report['novelty']:.2f} bits.",
        "",
        "Time per stage (ms): "
        + ", ".join(
            f"{stage} p50 {v['p50']:.2f} / p99 {v['p99']:.2f}"
            for stage, v in report["timing"]["stage_ms"].items()
        ),
        "",
        f"{report['timing']['events_per_s']:,.0f} events/s ({report['timing']['seconds']:.1f} s).",
        "",
    ]
    return "\n".join(lines)


def plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """HR over time and source shares over time, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = report["series"]
    x = [sum(series["evaluated"][: n + 1]) for n in range(len(series["evaluated"]))]
    out: list[Path] = []
    cut = min(int(k.split("@")[1]) for k in report["metrics"]["funnel"]["all"])

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in series["hr"].items():
        ax.plot(x, values, label=SYSTEM_NAMES.get(name, name))
    ax.set_xlabel("evaluated events")
    ax.set_ylabel(f"HR@{cut} (per window)")
    ax.set_title("Hit rate over time")
    ax.legend()
    fig.tight_layout()
    out.append(directory / "hr_over_time.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    shares = series["source_shares"]
    if shares:
        ax.stackplot(x, *shares.values(), labels=list(shares))
        ax.legend(loc="upper left", fontsize="small")
    ax.set_xlabel("evaluated events")
    ax.set_ylabel("share of feed slots")
    ax.set_ylim(0, 1)
    ax.set_title("Source shares over time")
    fig.tight_layout()
    out.append(directory / "source_shares.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    return out


def write_all(report: dict[str, Any], directory: Path) -> dict[str, Path]:
    """report.json, report.md and the plots under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "markdown": directory / "report.md"}
    paths["json"].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    paths["markdown"].write_text(markdown(report))
    for path in plots(report, directory):
        paths[path.stem] = path
    return paths
