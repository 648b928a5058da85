"""The docs tell the truth: commands and flags exist, Python snippets run, every config field is documented.

A failure names the document, the line and what to fix.  A Python block preceded by
``<!-- not-run: REASON -->`` is skipped (for code that needs a microscope or a cluster); keep that rare.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


def _blocks(path: Path):
    """``(language, first line number, text, not-run reason)`` of every fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            start, lang, body = i + 1, m.group(1), []
            reason = None
            for back in range(i - 1, max(i - 3, -1), -1):
                hit = NOT_RUN.search(lines[back])
                if hit:
                    reason = hit.group(1)
                    break
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            yield lang, start + 1, "\n".join(body), reason
        i += 1


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------ commands and flags
COMMAND = re.compile(r"(?:^|[\s`$(])(?:\.venv/bin/)?elit((?:\s+(?:--debug|-q|--quiet))*)\s+([a-z][a-z-]*)(.*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


def _command_uses():
    """``(where, subcommand, flags)`` for every ``elit CMD ...`` in shell blocks and inline code."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        shell_lines = set()
        for lang, start, body, _ in _blocks(path):
            if lang in ("", "bash", "sh", "console", "shell", "text"):
                for k, line in enumerate(body.splitlines()):
                    shell_lines.add(start + k)
                    line = line.split(" #")[0]
                    m = COMMAND.match(line.strip()) or COMMAND.match("$ " + line.strip().lstrip("$ "))
                    if m and line.strip().lstrip("$ ").startswith(("elit ", ".venv/bin/elit ")):
                        yield f"{_rel(path)}:{start + k}", m.group(2), FLAG.findall(m.group(3))
        for n, line in enumerate(text.splitlines(), 1):
            if n in shell_lines:
                continue
            for span in re.findall(r"`([^`]+)`", line):
                span = span.replace("\\|", "|")
                if span.startswith(("elit ", ".venv/bin/elit ")):
                    m = COMMAND.match(" " + span)
                    if m:
                        yield f"{_rel(path)}:{n}", m.group(2), FLAG.findall(m.group(3))


def _parser_options():
    from elit.cli import build_parser

    parser = build_parser()
    top = {s for a in parser._actions for s in a.option_strings}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return top, {name: {s for a in p._actions for s in a.option_strings} | top for name, p in sub.choices.items()}


def test_every_documented_command_and_flag_exists():
    top, commands = _parser_options()
    uses = list(_command_uses())
    assert len(uses) > 30, "the docs scanner found almost no commands: is it broken?"
    wrong = []
    for where, cmd, flags in uses:
        if cmd not in commands:
            wrong.append(f"{where}: `elit {cmd}` is not a command (commands: {', '.join(sorted(commands))})")
            continue
        for flag in flags:
            if flag not in commands[cmd]:
                wrong.append(f"{where}: `elit {cmd}` has no option {flag}")
    assert not wrong, "docs name commands or flags the parser lacks:\n" + "\n".join(wrong)


def test_every_command_is_documented():
    _, commands = _parser_options()
    used = {cmd for _, cmd, _ in _command_uses()}
    missing = sorted(set(commands) - used)
    assert not missing, f"commands documented nowhere in README.md or docs/*.md: {', '.join(missing)}"


# ------------------------------------------------------------------ config fields
def _config_fields():
    """``(where, field name)`` for every PipelineConfig field (recursively) and every stage Config field."""
    from pydantic import BaseModel

    from elit.config import PipelineConfig
    from elit.plugins import default_registry

    def walk(model, prefix):
        for name, info in model.model_fields.items():
            yield f"{prefix}{name}", name
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel) and name != "params":
                yield from walk(ann, f"{prefix}{name}.")

    yield from walk(PipelineConfig, "")
    for (kind, sname), entry in sorted(default_registry().stages.items()):
        if entry.plugin != "builtins":
            continue  # third-party plugins document their own fields
        for name in entry.cls.Config.model_fields:
            yield f"{kind} {sname!r}: params.{name}", name


def _documented_names() -> set[str]:
    names: set[str] = set()
    for path in DOCS:
        for span in re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8")):
            names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span))
    return names


def test_every_config_field_is_documented():
    documented = _documented_names()
    missing = [f"{where} (write `{name}` in the docs of that stage or section)"
               for where, name in _config_fields() if name not in documented]
    assert not missing, "config fields documented nowhere in README.md or docs/*.md:\n" + "\n".join(missing)


# ------------------------------------------------------------------ python snippets
def _snippets():
    out = []
    for path in DOCS:
        for lang, line, body, reason in _blocks(path):
            if lang == "python":
                out.append(pytest.param(body, reason, id=f"{path.name}:{line}"))
    return out


TINY = {
    "seed": 0, "device": "cpu", "scale": {"pixel_size": 0.2},
    "iterations": {"max_iterations": 1, "n_simulated": 2, "multiclass": False},
    "simulator": {"name": "graphene", "params": {"image_size": 48}},
    "augmenter": {"name": "standard", "params": {"crop_size": 32}},
    "architecture": {"name": "compact-unet", "params": {"base_filters": 4, "depth": 2}},
    "trainer": {"name": "multi-swa", "params": {"n_members": 2, "steps": 2, "batch_size": 2, "patch_size": 32,
                                                  "progress": False}},
    "selector": {"name": "auto", "params": {"k": 1}},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Small files the snippets name: movie.npy, config.yaml, a finished run.h5 and a live file."""
    import tifffile
    import yaml

    from elit.experiments import graphene_movie
    from elit.live import watch
    from elit.pipeline import Pipeline

    d = tmp_path_factory.mktemp("docs")
    movie = graphene_movie(n_frames=2, size=64, pixel_size=0.2, seed=0)
    np.save(d / "movie.npy", movie.frames)
    (d / "config.yaml").write_text(yaml.safe_dump(TINY))
    Pipeline(TINY).run(movie.frames, pixel_size=0.2, store=d / "run.h5")
    folder = d / "session_42"
    folder.mkdir()
    tifffile.imwrite(folder / "frame_000.tif", movie.frames[0])
    watch(d / "run.h5", folder, out=d / "session_42_live.h5", max_frames=1, timeout=60, log=None)
    return d


@pytest.mark.parametrize("code, reason", _snippets())
def test_python_snippet_runs(code, reason, workdir, tmp_path, monkeypatch):
    if reason:
        pytest.skip(f"marked not-run: {reason}")
    import matplotlib

    matplotlib.use("Agg")
    here = tmp_path / "w"
    shutil.copytree(workdir, here)  # a snippet may write files: each gets its own copy
    monkeypatch.chdir(here)
    exec(compile(code, "<docs snippet>", "exec"), {"__name__": "docs_snippet"})


# ------------------------------------------------------------------ outputs are never replaced without --overwrite
def _cli(*argv):
    from elit.cli import main

    return main([str(a) for a in argv])


def test_writing_commands_refuse_to_replace_without_overwrite(workdir, tmp_path, capsys):
    run = workdir / "run.h5"
    gallery = tmp_path / "g.png"
    gallery.write_bytes(b"mine")
    assert _cli("gallery", run, "--out", gallery) == 2 and gallery.read_bytes() == b"mine"
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.html").write_text("mine")
    assert _cli("report", run, "--out", tmp_path / "rep", "--html") == 2
    assert (tmp_path / "rep" / "report.html").read_text() == "mine"
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "simulated.png").write_bytes(b"mine")
    assert _cli("simulate", "--out", tmp_path / "sim", "-n", "2") == 2
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "pipeline.schema.json").write_text("mine")
    (schemas / "other.schema.json").write_text("not elit's")
    assert _cli("schema", "--out", schemas) == 2
    assert (schemas / "pipeline.schema.json").read_text() == "mine"
    assert _cli("schema", "--out", schemas, "--overwrite") == 0
    assert (schemas / "other.schema.json").read_text() == "not elit's"  # other files are left alone
    before = run.read_bytes()
    assert _cli("select", run, "--members", "1") == 2
    err = capsys.readouterr().err
    assert "discarding iteration 0's selection and prediction and iterations 1..1" in err and "--overwrite" in err
    assert run.read_bytes() == before
