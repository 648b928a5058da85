"""The drift report of a live file: :func:`drift_figure`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from elit.errors import StoreError
from elit.live.file import read_live


def drift_figure(live_h5_path, out_png, dpi: int = 110) -> str:
    """Draw a live file's drift report: scores, members used, atoms found, uncertainty, drift indicators.

    Parameters
    ----------
    live_h5_path : str or Path
        A live file (it may still be growing).
    out_png : str or Path
        The PNG to write.

    Returns
    -------
    str
        The PNG path.
    """
    from elit.figures import file_pyplot

    data = read_live(live_h5_path)
    if data.n_frames == 0:
        raise StoreError(f"{live_h5_path} holds no complete frame yet")
    plt = file_pyplot()
    n = data.n_frames
    x = np.arange(n)
    scores = data.frames["scores"]
    used = data.frames["members_used"]
    m = scores.shape[1]
    flagged = data.frames["needs_retraining"]
    settings = data.attrs.get("live_settings") or {}
    fig, axes = plt.subplots(5, 1, figsize=(9, 11), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.6, 1.6, 2.4]})

    def shade(ax):
        for f in np.flatnonzero(flagged):
            ax.axvspan(f - 0.5, f + 0.5, color="tab:red", alpha=0.12, lw=0)

    ax = axes[0]
    cmap = plt.get_cmap("tab10" if m <= 10 else "tab20")
    for j in range(m):
        ax.plot(x, scores[:, j], "-", color=cmap(j % cmap.N), lw=1.2, label=f"member {j}")
        ax.plot(x[used[:, j]], scores[used[:, j], j], "o", color=cmap(j % cmap.N), ms=4)
    if "min_score" in settings:
        ax.axhline(settings["min_score"], color="k", ls="--", lw=0.8, label="min_score")
    shade(ax)
    ax.set_ylabel("member score")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=min(m + 1, 5), loc="lower left")
    ax.set_title(f"{Path(live_h5_path).name}: {n} frames ({data.state}); dots = used, red = retraining flagged", fontsize=10)

    ax = axes[1]
    ax.imshow(used.T, aspect="auto", cmap="Greens", vmin=0, vmax=1.3, interpolation="nearest",
              extent=(-0.5, n - 0.5, m - 0.5, -0.5))
    ax.set_ylabel("members used\n(green)")
    ax.set_yticks(range(m))
    ax.set_yticklabels([f"member {j}" for j in range(m)] if m <= 12 else [str(j) for j in range(m)], fontsize=7)

    ax = axes[2]
    ax.bar(x, data.frames["n_atoms"], color="tab:blue", width=0.8)
    shade(ax)
    ax.set_ylabel("atoms found")

    ax = axes[3]
    ax.plot(x, data.drift["mean_uncertainty"], "o-", color="tab:purple", ms=3)
    shade(ax)
    ax.set_ylabel("mean atom\nuncertainty")
    ax.text(0.99, 0.9, "0 while one member is used", transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.4")

    ax = axes[4]
    top = 1.0
    for name, colour in (("mean_intensity", "tab:gray"), ("noise", "tab:orange"), ("sharpness", "tab:green"),
                         ("contrast", "tab:brown")):
        v = data.drift[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmean(v[: max(1, min(3, n))])
        if np.isfinite(ref) and ref != 0:
            ax.plot(x, v / ref, "-", color=colour, lw=1.2, label=name)
            if np.isfinite(v / ref).any():
                top = max(top, float(np.nanmax(v / ref)))
    ax.set_ylim(0, 1.45 * top)  # room for the legend
    shade(ax)
    ax.set_ylabel("image indicators\n(/ first 3 frames)")
    ax.set_xlabel("frame")
    twin = ax.twinx()
    twin.plot(x, data.drift["spectral_change"], ":", color="k", lw=1.4, label="spectral change (decades, right)")
    twin.set_ylabel("spectral change")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    out_png = str(out_png)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png
