"""The report's figures (matplotlib, Agg): each function takes derived tables and returns
PNG bytes. Settings keep one colour and one order in every figure."""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

from detcost.derive.keys import AA_LABEL, group_fields, setting_order  # noqa: E402
from detcost.settings import SETTINGS  # noqa: E402

# One colour a setting, the same in every figure: the matrix's in tab10, the frameworks'
# switches after them in Dark2 (14 settings, no two alike).
_PALETTE = (*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors)
COLORS = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(SETTINGS)}
COLORS[AA_LABEL] = (0.6, 0.6, 0.6)
DPI = 110
FLOOR = 1e-12  # where bitwise-identical settings sit on a log axis of distances


def color(setting: str):
    return COLORS.get(setting, (0.3, 0.3, 0.3))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, width: float = 4.2, height: float = 3.2):
    cols = min(max(n, 1), 3)
    rows = (max(n, 1) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _panels(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per workload and value of any axis in the table (threads, sizes, ...)."""
    keys = ["workload", *[a for a in group_fields() if a in table]]
    panels = []
    for key, rows in table.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        extra = ", ".join(f"{k}={v}" for k, v in zip(keys[1:], key[1:]))
        panels.append((f"{key[0]} ({extra})" if extra else str(key[0]), rows))
    return panels


def _log_steps(ax, steps) -> None:
    """Log x axis of training steps, labelled with the checkpoint steps themselves."""
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(int(s) for s in steps)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def price_bars(speed: pd.DataFrame) -> bytes:
    """Price of each setting per workload (step time / fastest), 95% interval whiskers.
    The axis stops at a sensible height: a whisker beyond it (a wide interval on a noisy
    run, or none at all from one round) is drawn to the edge and marked with its value."""
    panels = _panels(speed)
    fig, axes = _grid(len(panels), height=3.6)
    for ax, (title, rows) in zip(axes, panels):
        present = set(rows["setting"])
        labels = [*setting_order(present - {AA_LABEL}), *([AA_LABEL] if AA_LABEL in present else [])]
        rows = rows.set_index("setting").loc[labels]
        x = np.arange(len(labels))
        top = max(1.5, float(np.nanmax(rows["price"])) * 1.25)
        hi = rows["price_hi"].clip(upper=top)
        err = np.vstack([rows["price"] - rows["price_lo"], hi - rows["price"]]).clip(min=0)
        ax.bar(
            x,
            rows["price"],
            yerr=err,
            capsize=3,
            color=[color(s) for s in labels],
            hatch=["//" if s == AA_LABEL else "" for s in labels],
            edgecolor="white",
        )
        for xi, value in zip(x, rows["price_hi"]):
            if not value <= top:
                shown = "no interval" if not np.isfinite(value) else (f"to {value:.2f}" if value < 10 else "to >10")
                ax.annotate(
                    f"▲ {shown}", (xi, top), xytext=(4, -3), textcoords="offset points",
                    ha="left", va="top", fontsize=6, color="dimgrey",
                )  # fmt: skip
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(x, labels, rotation=90, fontsize=8)
        ax.set_ylabel("price (step time / fastest)")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(min(0.9, float(np.nanmin(rows["price_lo"])) - 0.05), top)
    fig.suptitle("Price per setting (bars: paired estimate; whiskers: 95% interval across rounds)", fontsize=10, y=1.0)
    fig.tight_layout()
    return _png(fig)


KIND_COLORS = plt.get_cmap("Set2").colors  # one colour a machine kind, in the order the kinds came


def kind_bars(table: pd.DataFrame, kinds: list[str]) -> bytes:
    """Each setting's price per machine kind: per workload a group of bars per setting, one
    bar per kind (a gap where that kind did not run it), interval whiskers; as in
    `price_bars`, a whisker beyond the axis is drawn to the edge and marked."""
    panels = _panels(table)
    fig, axes = _grid(len(panels), width=max(4.2, 1.1 * len(kinds) + 2.5), height=3.8)
    width = 0.8 / max(len(kinds), 1)
    for ax, (title, rows) in zip(axes, panels):
        present = set(rows["setting"])
        labels = [*setting_order(present - {AA_LABEL}), *([AA_LABEL] if AA_LABEL in present else [])]
        x = np.arange(len(labels))
        top = max(1.5, float(np.nanmax(rows["price"])) * 1.25)
        for i, kind in enumerate(kinds):
            mine = rows[rows["machine"] == kind].set_index("setting").reindex(labels)
            hi = mine["price_hi"].clip(upper=top)
            err = np.vstack([mine["price"] - mine["price_lo"], hi - mine["price"]]).clip(min=0)
            xs = x - 0.4 + width * (i + 0.5)
            color = KIND_COLORS[i % len(KIND_COLORS)]
            label = textwrap.shorten(kind, 90)
            ax.bar(xs, mine["price"], width, yerr=np.nan_to_num(err), capsize=2, color=color, edgecolor="white",
                   label=label)  # fmt: skip
            for xi, value, price in zip(xs, mine["price_hi"], mine["price"]):
                if np.isfinite(price) and not value <= top:
                    ax.annotate("▲", (xi, top), ha="center", va="top", fontsize=6, color="dimgrey")
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(x, labels, rotation=90, fontsize=8)
        ax.set_ylabel("price (vs its kind's fastest)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(min(0.9, float(np.nanmin(rows["price_lo"])) - 0.05), top)
    if axes:
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.45), frameon=False)
    fig.suptitle("Price per setting on each machine kind (whiskers: interval across that kind's rounds)", fontsize=10,
                 y=1.0)  # fmt: skip
    fig.tight_layout()
    return _png(fig)


def variance_vs_price(points: pd.DataFrame) -> bytes:
    """`tradeoff_figure` as PNG bytes."""
    return _png(tradeoff_figure(points))


def tradeoff_figure(points: pd.DataFrame):
    """One point per setting: its worst price across workloads against its mean spread
    between repeats (relative L2 of parameters); bitwise-identical settings sit on the
    floor line. The marks are the analysis's decisions, as the recommendation reads them:
    the recommended setting is ringed, a setting decided over the budget is crossed, one
    whose price is not decided is hollow. Labels are placed apart by adjustText, so
    settings at the same spread stay readable."""
    from adjustText import adjust_text

    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    pts = points.assign(y=points["rel_l2"].fillna(0).clip(lower=FLOOR)).sort_values(["y", "price"])
    texts = []
    for _, p in pts.iterrows():
        hollow = bool(p.get("unconfirmed"))
        ax.scatter(p["price"], p["y"], s=70, color="white" if hollow else color(p["setting"]),
                   edgecolor=color(p["setting"]) if hollow else "black", linewidth=1.0, zorder=3)  # fmt: skip
        if p.get("recommended"):
            ax.scatter(p["price"], p["y"], s=260, facecolor="none", edgecolor="black", linewidth=1.8, zorder=4)
        if p.get("over_budget"):
            ax.scatter(p["price"], p["y"], s=90, marker="x", color="firebrick", linewidth=1.6, zorder=5)
        texts.append(ax.text(p["price"], p["y"], p["setting"], fontsize=8, zorder=6))
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 10, max(float(pts["y"].max()) * 100, 1e-9))
    ax.axhline(FLOOR, color="grey", lw=0.6)
    ax.annotate("bitwise identical", (0.01, FLOOR), xycoords=("axes fraction", "data"), xytext=(0, -11),
                textcoords="offset points", fontsize=8, color="grey")  # fmt: skip
    ax.margins(x=0.2)
    ax.set_xlabel("worst price across workloads (step time / fastest)")
    ax.set_ylabel("spread between repeats (rel. L2 of θ)")
    ax.set_title("What each setting buys against what it costs (ringed: the recommendation; x: over the budget; "
                 "hollow: price undecided)", fontsize=9)  # fmt: skip
    adjust_text(texts, ax=ax, expand=(1.2, 1.4), arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
    return fig


def divergence(curves: pd.DataFrame) -> bytes:
    """Distance between repeats at each checkpoint, log-log, one panel per workload where
    some setting's repeats drift apart (the report says in a sentence where none do)."""
    panels = (
        _panels(
            curves.drop(columns=["step", "rel_l2", "max_abs_dtheta"], errors="ignore").join(curves[["step", "rel_l2"]])
        )
        if not curves.empty
        else []
    )
    panels = [(title, rows) for title, rows in panels if (rows["rel_l2"] > 0).any()]  # no empty panel
    fig, axes = _grid(len(panels))
    for ax, (title, rows) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        drawn = rows[rows["rel_l2"] > 0]
        identical = sorted(set(rows["setting"]) - set(drawn["setting"]))
        for s in setting_order(drawn["setting"]):
            line = drawn[drawn["setting"] == s].groupby("step")["rel_l2"].mean()
            ax.plot(line.index, line.values, marker="o", ms=3, color=color(s), label=s)
        _log_steps(ax, rows["step"])
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_xlabel("training step")
        ax.set_ylabel("rel. L2 between repeats")
        if identical:
            note = "identical, not drawn:\n" + textwrap.fill(", ".join(identical), 40)
            ax.text(0.02, 0.98, note, transform=ax.transAxes, fontsize=7, color="grey", va="top")
    fig.suptitle("Divergence between repeats over training (log-log)", fontsize=10, y=1.0)
    fig.tight_layout()
    return _png(fig)


def cold_start(speed: pd.DataFrame) -> bytes:
    """Wall time of the warm-up steps (where cuDNN autotunes), per setting and workload."""
    rows = speed[speed["setting"] != AA_LABEL]
    panels = [title for title, _ in _panels(rows)]
    groups = [g for _, g in _panels(rows)]
    settings = setting_order(rows["setting"])
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(panels) + 2), 3.8))
    width = 0.8 / max(len(settings), 1)
    for i, s in enumerate(settings):
        vals = [g[g["setting"] == s]["cold_start_s"].mean() for g in groups]
        ax.bar(np.arange(len(panels)) + i * width, vals, width, color=color(s), label=s)
    ax.set_xticks(np.arange(len(panels)) + width * (len(settings) - 1) / 2, panels, fontsize=8)
    ax.set_ylabel("warm-up wall time (s)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside, never over, the bars
    ax.set_title("Cold start per setting: the first steps, where cuDNN autotunes", fontsize=10)
    return _png(fig)


def explain_bars(attr: pd.DataFrame, cuda: bool) -> bytes:
    """Per workload: the ops that changed most against the reference, one bar per setting."""
    metric, label = (
        ("delta_ms", "change in time (ms/step): kernels on the device, ops on the host")
        if cuda
        else ("delta_calls", "change in calls per step")
    )
    attr = attr.dropna(subset=["op"])
    workloads = list(dict.fromkeys(attr["workload"]))
    fig, axes = _grid(len(workloads), width=5.0, height=3.4)
    for ax, w in zip(axes, workloads):
        rows = attr[attr["workload"] == w]
        ops = list(rows.groupby("op")[metric].apply(lambda v: v.abs().max()).sort_values(ascending=False).index[:6])
        settings = setting_order(rows["setting"])
        height = 0.8 / max(len(settings), 1)
        for i, s in enumerate(settings):
            vals = [rows[(rows["setting"] == s) & (rows["op"] == op)][metric].sum() for op in ops]
            ax.barh(np.arange(len(ops)) + i * height, vals, height, color=color(s), label=s)
        ax.set_yticks(
            np.arange(len(ops)) + height * (len(settings) - 1) / 2, [textwrap.shorten(op, 38) for op in ops], fontsize=7
        )
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel(label, fontsize=8)
        ax.set_title(f"{w} (vs {rows['reference'].iloc[0]})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("What changed: ops against the reference setting", fontsize=10, y=1.0)
    fig.tight_layout()
    return _png(fig)
