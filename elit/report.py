"""Figures and the self-contained HTML report of a run file."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from elit.errors import StoreError
from elit.figures import file_pyplot

CLASS_COLOURS = ("#00e5ff", "#ff3d00", "#76ff03", "#ffea00", "#d500f9", "#2979ff")


def _default_frames(n: int, frames: list[int] | None) -> list[int]:
    if frames:
        bad = [f for f in frames if f < 0 or f >= n]
        if bad:
            raise StoreError(f"frames {bad} do not exist: the data has frames 0..{n - 1}")
        return frames
    return sorted({0, n // 2, n - 1})


def _run_frames(store):
    """``(config, raw frames, working frames, input pixel size)`` of a run file."""
    from elit.config import PipelineConfig
    from elit.pipeline import prepare_frames

    config = PipelineConfig.model_validate(store.read_config())
    raw, px, _ = store.read_input("frames")
    working, input_px, _ = prepare_frames(raw, px, config.scale)
    return config, raw, working, input_px


def _working_frames(store):
    return _run_frames(store)[2]


def member_gallery(result: str | Path, out: Path, iteration: int = 0, frames: list[int] | None = None) -> Path:
    """One PNG grid: a row per member, a column per frame, each panel numbered (the paper's Fig. 2).

    An operator looks at it to choose artifact-free members (``elit select``).
    """
    from elit.store import RunStore

    store = RunStore.open(result, mode="r")
    if not store.stage_complete(iteration, "predict"):
        raise StoreError(f"{result}: iteration {iteration} has no finished predictions")
    preds = store.read_image(f"/iterations/iter_{iteration:03d}/predict/member_probabilities")
    chosen = set()
    if store.stage_complete(iteration, "selector"):
        chosen = set(store.read_json(f"/iterations/iter_{iteration:03d}/selector/selection")["members"])
    working = _working_frames(store)
    cols = _default_frames(preds.shape[1], frames)
    n_members = preds.shape[0]
    plt = file_pyplot()
    size = 2.2
    fig, axes = plt.subplots(n_members + 1, len(cols), figsize=(max(size * len(cols), 5.5), size * (n_members + 1)), squeeze=False)
    for j, f in enumerate(cols):
        axes[0, j].imshow(working[f], cmap="gray")
        axes[0, j].set_title(f"frame {f}", fontsize=9)
        for m in range(n_members):
            ax = axes[m + 1, j]
            ax.imshow(preds[m, f].max(axis=0), cmap="magma", vmin=0, vmax=1)
            if j == 0:
                mark = " (selected)" if m in chosen else ""
                ax.set_ylabel(f"member {m}{mark}", fontsize=9, color="#c00" if m in chosen else "black")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=9)
    fig.suptitle(f"Every member's prediction, iteration {iteration}", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out / f"members_iter{iteration:03d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _atoms_overlay(store, it: int, working: np.ndarray, frames: list[int], out: Path) -> Path:
    from elit.pipeline import read_working_atoms

    atoms = read_working_atoms(store, f"/iterations/iter_{it:03d}/predict")
    mean = store.read_image(f"/iterations/iter_{it:03d}/predict/mean")
    plt = file_pyplot()
    fig, axes = plt.subplots(2, len(frames), figsize=(max(3.2 * len(frames), 5.5), 6.4), squeeze=False)
    for j, f in enumerate(frames):
        axes[0, j].imshow(working[f], cmap="gray")
        a = atoms.in_frame(f)
        for k, name in enumerate(atoms.class_names):
            sel = a.class_index == k
            axes[0, j].scatter(a.col[sel], a.row[sel], s=6, c=CLASS_COLOURS[k % len(CLASS_COLOURS)], label=name)
        axes[0, j].set_title(f"frame {f}: {len(a)} atoms", fontsize=9)
        axes[1, j].imshow(mean[f].max(axis=0), cmap="magma", vmin=0, vmax=1)
        axes[1, j].set_title("mean probability", fontsize=9)
    axes[0, 0].legend(loc="upper right", fontsize=7, markerscale=2)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Atoms by class and mean prediction, iteration {it}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _quality(store, it: int, raw: np.ndarray, input_px: float, lattice: str, frames: list[int],
             out: Path) -> tuple[Path, dict]:
    """The label-free checks (:func:`elit.quality.quality_summary`) as one figure, and the summary."""
    from elit.quality import quality_summary

    atoms = store.read_table(f"/iterations/iter_{it:03d}/predict/atoms")
    bond = 1.42 if lattice == "graphene" else None
    q = quality_summary(atoms, input_px, bond_A=bond)
    plt = file_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    edges, counts = np.asarray(q["nn_histogram"]["edges"]), np.asarray(q["nn_histogram"]["counts"])
    axes[0].bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#607d8b")
    if bond:
        axes[0].axvspan(0.85 * bond, 1.15 * bond, color="#00e5ff", alpha=0.25, label=f"{bond} Å ± 15 %")
        axes[0].legend(fontsize=8)
    share = q["three_neighbour_share"]
    axes[0].set_xlabel("nearest-neighbour distance (Å)")
    axes[0].set_ylabel("atoms")
    axes[0].set_title(f"median {q['nn_median_A']:.3f} Å" + (f"; three neighbours at the bond: {share:.1%}"
                                                           if share is not None else ""), fontsize=9)
    f = frames[0]
    frame = raw[f] if raw.ndim == 3 else raw
    axes[1].imshow(frame, cmap="gray")
    a = atoms.in_frame(f)
    axes[1].scatter(a.col, a.row, s=3, c="#00e5ff", alpha=0.6, label="atoms")
    dop = [d for d in q["dopants"] if d["frame"] == f]
    if dop:
        axes[1].scatter([d["x"] for d in dop], [d["y"] for d in dop], s=60, facecolors="none", edgecolors="#ff3d00",
                        linewidths=1.5, label=f"not {q['majority_class']} ({len(dop)})")
    vac = [v for v in q["vacuum"] if v["frame"] == f]
    if vac:
        axes[1].scatter([v["x"] for v in vac], [v["y"] for v in vac], s=60, marker="x", c="#ffea00",
                        label=f"in vacuum ({len(vac)})")
    fill = [v for v in q["filled"] if v["frame"] == f]
    if fill:
        axes[1].scatter([v["x"] for v in fill], [v["y"] for v in fill], s=40, marker="+", c="#e040fb",
                        label=f"missed here, seen in the frames around ({len(fill)})")
    axes[1].legend(loc="upper right", fontsize=7)
    axes[1].set_title(f"frame {f}: dopants and atoms in vacuum (all frames: {len(q['dopants'])}, {q['n_vacuum']})",
                      fontsize=9)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    averaged = (f"; positions averaged over {q['mean_averaged']:.1f} frames on average, {q['n_filled']} atoms filled in"
                if q["mean_averaged"] > 1 or q["n_filled"] else "")
    fig.suptitle(f"Label-free checks, iteration {it}{averaged}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out, q


def _uncertainty(store, it: int, frames: list[int], out: Path) -> Path:
    std = store.read_image(f"/iterations/iter_{it:03d}/predict/uncertainty")
    names = store.read_table(f"/iterations/iter_{it:03d}/predict/atoms").class_names
    plt = file_pyplot()
    k = std.shape[1]
    fig, axes = plt.subplots(k, len(frames), figsize=(max(3.2 * len(frames), 5.5), 3.0 * k), squeeze=False)
    vmax = float(np.percentile(std, 99.9)) or 1.0
    for c in range(k):
        for j, f in enumerate(frames):
            im = axes[c, j].imshow(std[f, c], cmap="viridis", vmin=0, vmax=vmax)
            axes[c, j].set_title(f"{names[c] if c < len(names) else c}: frame {f}", fontsize=9)
            axes[c, j].set_xticks([])
            axes[c, j].set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="ensemble std")
    fig.suptitle(f"Per-class uncertainty, iteration {it}", fontsize=11)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _detection(summary: list[dict], out: Path) -> Path:
    plt = file_pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for s in summary:
        ax.plot(s["atoms_per_frame"], marker="o", ms=3, label=f"iteration {s['iteration']} ({s['kind']})")
    ax.set_xlabel("frame")
    ax.set_ylabel("atoms found")
    ax.set_title("Atoms found per frame, per iteration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _selection_scores(store, it: int, out: Path) -> tuple[Path, dict]:
    base = f"/iterations/iter_{it:03d}/selector"
    meta = store.read_json(f"{base}/selection")
    scores = store.read_array(f"{base}/scores")
    criteria = {c: store.read_array(f"{base}/criteria/{c}") for c in meta.get("criteria", [])}
    plt = file_pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    x = np.arange(len(scores))
    colours = ["#c62828" if m in meta["members"] else "#90a4ae" for m in x]
    ax.bar(x, scores, color=colours)
    ax.set_xticks(x)
    ax.set_xlabel("member (red: selected)")
    ax.set_ylabel("score")
    ax.set_title(f"Selection scores, iteration {it}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out, {"members": meta["members"], "reasons": meta.get("reasons", []), "scores": scores, "criteria": criteria}


def write_report(result: str | Path, out: Path, html: bool = False, extra_rows: list[dict] | None = None) -> list[Path]:
    """Write the run's figures as PNG into ``out`` (and ``report.html`` when asked); return the paths."""
    from elit.store import RunStore

    store = RunStore.open(result, mode="r")
    its = [it for it in store.iterations() if store.stage_complete(it, "predict")]
    if not its:
        raise StoreError(f"{result} holds no finished iteration to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config, raw, working, input_px = _run_frames(store)
    frames = _default_frames(len(working), None)
    paths = [member_gallery(result, out / "members_iter000.png", 0, frames)]
    from elit.results import resolve_iteration

    last = resolve_iteration(store, "last")  # the result: rejected iterations are not it
    paths.append(_atoms_overlay(store, last, working, frames, out / "atoms_last.png"))
    if len(its) > 1:
        paths.append(_atoms_overlay(store, 0, working, frames, out / "atoms_iter000.png"))
    paths.append(_uncertainty(store, last, frames, out / "uncertainty_last.png"))
    paths.append(_quality(store, last, raw, input_px, config.scale.lattice, frames, out / "quality_last.png")[0])
    summary = store.read_summary()
    if summary:
        paths.append(_detection(summary, out / "detection.png"))
    selections = {}
    for it in its:
        if store.stage_complete(it, "selector"):
            p, sel = _selection_scores(store, it, out / f"selection_iter{it:03d}.png")
            paths.append(p)
            selections[it] = sel
    if html:
        paths.append(write_html(store, out / "report.html", paths, summary, selections, extra_rows))
    return paths


def _img_tag(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(path.stem)}</figcaption></figure>'


def write_html(store, out: Path, figures: list[Path], summary, selections, extra_rows=None) -> Path:
    """One offline HTML file: figures embedded, iteration table, selection scores, provenance."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{s['iteration']}</td><td>{esc(s['kind'])}</td><td>{s['n_atoms']}</td>"
        f"<td>{_fmt(s['detection_rate']) if s['detection_rate'] is not None else '-'}</td>"
        f"<td>{esc(str(s['members']))}</td><td>{s['seconds']:.1f}</td>"
        f"<td>{'yes' if s.get('accepted', True) else 'rejected by the guard'}</td><td>{esc(s.get('note', ''))}</td></tr>"
        for s in (summary or [])
    )
    sel_html = ""
    for it, sel in selections.items():
        crit_names = list(sel["criteria"])
        head = "".join(f"<th>{esc(c)}</th>" for c in crit_names)
        body = "".join(
            f"<tr{' class=sel' if m in sel['members'] else ''}><td>{m}</td><td>{sel['scores'][m]:.3f}</td>"
            + "".join(f"<td>{sel['criteria'][c][m]:.3f}</td>" for c in crit_names)
            + "</tr>"
            for m in range(len(sel["scores"]))
        )
        reasons = "".join(f"<li>{esc(r)}</li>" for r in sel["reasons"])
        sel_html += f"<h3>Iteration {it}</h3><table><tr><th>member</th><th>score</th>{head}</tr>{body}</table><ul>{reasons}</ul>"
    extra = ""
    if extra_rows:
        cols = list(extra_rows[0])
        extra = "<h2>Scores against the hidden truth</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"
        extra += "".join("<tr>" + "".join(f"<td>{esc(_fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in extra_rows) + "</table>"
    prov = esc(store.tree(verbose=False))
    config = esc(json.dumps(store.read_config(), indent=2))
    figs = "".join(_img_tag(p) for p in figures if Path(p).suffix == ".png")
    doc = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>elit report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0}}td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}
tr.sel{{background:#ffebee}}figure{{display:inline-block;margin:0.5em}}img{{max-width:1050px}}
pre{{background:#f5f5f5;padding:0.7em;overflow:auto;font-size:12px}}</style></head><body>
<h1>elit report</h1><p>Run file: <code>{esc(str(store.path))}</code></p>
<h2>Iterations</h2><table><tr><th>iteration</th><th>kind</th><th>atoms</th><th>detection rate</th><th>members</th><th>seconds</th><th>accepted</th><th>note</th></tr>{rows}</table>
{extra}<h2>Figures</h2>{figs}<h2>Selection scores</h2>{sel_html}
<h2>Provenance</h2><pre>{prov}</pre><h2>Configuration</h2><pre>{config}</pre></body></html>"""
    out = Path(out)
    out.write_text(doc)
    return out


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
