"""The report: ``reports/<preset>/report.md`` and ``report.html`` from whatever points are stored.

For every experiment that has rows: its figure (PNG + SVG), a table of the stored points, the comparison with the
paper's claims (:func:`discussion` of the module) and the list of points still missing or failed. Up front: the
compact summary table (Fig. 6 at the reference power), the exact commands, the configuration, seeds, budgets, wall
times and machine. The HTML is rendered by a small built-in markdown subset converter (no extra dependency).
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .common import Context
from .scheme import Scheme, is_learned, scheme_label
from .store import code_identity

__all__ = ["format_summary", "markdown_to_html", "summary_rows", "write_report"]


def _num(v: Any, digits: int = 3) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits}g}"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


def _with_ci(r: dict[str, Any], kind: str) -> str:
    """``RMSE [low-high]``: the stored RMSE of ``kind`` ("position" / "velocity") with its 95 % bootstrap interval
    (:func:`cfisac.metrics.rmse_confidence_interval`) when the row has one."""
    ci = (r.get("metrics") or {}).get(f"{kind}_rmse_ci95")
    value = _num(r[f"{kind}_rmse"])
    if not ci or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        return value
    return f"{value} [{_num(ci[0])}-{_num(ci[1])}]"


def _bits(v: Any) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    from ..fronthaul import format_bits

    return f"{format_bits(v)} ({int(v):,})" if v >= 1000 else f"{int(v)} bit"


# ---------------------------------------------------------------------------------------------------- summary
def summary_rows(ctx: Context, power: float | None = None) -> list[dict[str, Any]]:
    """Fig. 6 rows at ``power`` (default: the preset's operating power P0), one per scheme, ``crlb`` first."""
    from .common import operating_power
    from .plotting import _order
    from .registry import load_rows

    p = operating_power(ctx) if power is None else power
    rows = [r for r in load_rows(ctx, "fig6") if abs(r["x_value"] - p) < 1e-9]
    return sorted(rows, key=lambda r: _order(r["scheme"]))


def summary_powers(ctx: Context) -> list[float]:
    """The paper's 30 dBm and the preset's operating power P0 (when they differ), where Fig. 6 has rows."""
    from .common import operating_power
    from .fig6 import REFERENCE_POWER

    return [p for p in dict.fromkeys((REFERENCE_POWER, operating_power(ctx))) if summary_rows(ctx, p)]


def _fronthaul_bits(ctx: Context) -> dict[str, float]:
    """Bits per AP and update of each scheme from the fronthaul experiment's rows (when run)."""
    from .registry import load_rows

    return {r["scheme"]: r["fronthaul_bits_per_ap"] for r in load_rows(ctx, "fronthaul")
            if r["series"] == "preset"}


def format_summary(ctx: Context) -> str:
    """The compact final table(s) printed at the end of ``cfisac reproduce`` (plain text): Fig. 6 at the paper's
    30 dBm and at the preset's operating power P0."""
    powers = summary_powers(ctx)
    if not powers:
        return "(no Fig. 6 results stored yet at 30 dBm or the operating power)"
    return "\n\n".join(_summary_block(ctx, p) for p in powers)


def _summary_block(ctx: Context, power: float) -> str:
    from .common import operating_power

    rows = summary_rows(ctx, power)
    crlb = next((r for r in rows if r["scheme"] == "crlb"), None)
    bits = _fronthaul_bits(ctx)
    head = ("scheme", "location RMSE (m)", "velocity RMSE (m/s)", "root-CRLB (m | m/s)", "fronthaul bits/AP/update",
            "scenes")
    table = [head]
    for r in rows:
        if r["scheme"] == "crlb":
            continue
        b = r["fronthaul_bits_per_ap"]
        if not (isinstance(b, float) and math.isfinite(b)):
            b = bits.get(r["scheme"], math.nan)
        cr = (f"{_num(r['root_crlb_position'])} | {_num(r['root_crlb_velocity'])}" if math.isfinite(
            r["root_crlb_position"]) else "–")
        table.append((scheme_label(r["scheme"]), _with_ci(r, "position"), _with_ci(r, "velocity"), cr,
                      _bits(b), _num(r["n_scenes"])))
    if crlb is not None:
        table.append(("root-CRLB (bound)", _num(crlb["root_crlb_position"]), _num(crlb["root_crlb_velocity"]),
                      "", "", _num(crlb["n_scenes"])))
    widths = [max(len(t[k]) for t in table) for k in range(len(head))]
    what = "the paper's operating power" if power == 30.0 else ""
    if power == operating_power(ctx) and power != 30.0:
        what = "the preset's operating power P0: the paper's integrated SNR"
    lines = [f"Fig. 6 at P = {power:g} dBm ({what}), preset {ctx.preset}; RMSE [95 % bootstrap interval over "
             "scenes]; root-CRLB of the scenes each scheme was evaluated on:"]
    for i, t in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


LEARNED_AT_PRIOR = 0.9  # a learned scheme within 10 % of the prior predictor's RMSE has learned (almost) nothing


def role(scheme: str) -> str:
    """Whose design a learned scheme is: the paper's model as published, or ours (what it changes)."""
    s = Scheme.parse(scheme)
    if s.faithful:
        return {"dvqvae": "the paper's model (raw Y_m at the receive AP, the decoder of Eq. 16)",
                "dvae": "as in the paper (raw Y_m at the receive AP, continuous latents)",
                "cnn": "as in the paper (the centralized baseline: raw Y_m sent to the CPU)"}[s.kind]
    changes = ([f"the {s.front_end} front end"] if s.front_end != "raw" else []) + (
        [f"the {s.decoder}-aware CPU decoder" if s.decoder == "geometry" else f"the {s.decoder} decoder"]
        if s.decoder != "generic" else [])
    return "our design, beyond the paper (" + " and ".join(changes) + ")"


def _against_prior(fp: float, fv: float) -> str:
    """What the RMSE fractions ``fp``, ``fv`` of the prior predictor's say (see :data:`LEARNED_AT_PRIOR`)."""
    learned = [q for q, f in (("location", fp), ("velocity", fv)) if f < LEARNED_AT_PRIOR]
    worse = [q for q, f in (("location", fp), ("velocity", fv)) if f > 1 / LEARNED_AT_PRIOR]
    level = [q for q in ("location", "velocity") if q not in learned and q not in worse]
    parts = ([" and ".join(learned) + " learned"] if learned else []) + (
        [" and ".join(worse) + " worse than the prior predictor"] if worse else [])
    if level:
        parts.append(" and ".join(level) + f" not learned (within {1 - LEARNED_AT_PRIOR:.0%} of the prior predictor)")
    return "; ".join(parts)


def verdict_lines(ctx: Context) -> list[str]:
    """Plain statements, computed from the stored Fig. 6 rows at each summary power, of how every learned scheme
    fares against the prior predictor (the best fixed guess, zero velocity), the ML estimator (on its own, possibly
    fewer, test scenes) and the root-CRLB of its scenes, and whose design it is (:func:`role`)."""
    out: list[str] = []
    for power in summary_powers(ctx):
        rows = summary_rows(ctx, power)
        prior = next((r for r in rows if r["scheme"] == "prior"), None)
        if prior is None:
            continue
        ml = next((r for r in rows if r["scheme"] == "ml"), None)
        for r in rows:
            if not is_learned(r["scheme"]):
                continue
            fp, fv = (r[k] / prior[k] for k in ("position_rmse", "velocity_rmse"))
            vs_ml = ""
            if ml is not None and ml["position_rmse"] > 0 and ml["velocity_rmse"] > 0:
                vs_ml = (f"; {_num(r['position_rmse'] / ml['position_rmse'])} / "
                         f"{_num(r['velocity_rmse'] / ml['velocity_rmse'])} times the ML estimator's "
                         f"({_num(ml['position_rmse'])} m / {_num(ml['velocity_rmse'])} m/s on its "
                         f"{_num(ml['n_scenes'])} test scenes)")
            crlb = ""
            if math.isfinite(r["root_crlb_position"]) and r["root_crlb_position"] > 0:
                crlb = (f"; {_num(r['position_rmse'] / r['root_crlb_position'])} / "
                        f"{_num(r['velocity_rmse'] / r['root_crlb_velocity'])} times the root-CRLB of its scenes")
            out.append(f"At {power:g} dBm, {scheme_label(r['scheme'])}, {role(r['scheme'])}: "
                       f"{_num(r['position_rmse'])} m / {_num(r['velocity_rmse'])} m/s = {fp:.2f} / {fv:.2f} of "
                       f"the prior predictor's RMSE ({_num(prior['position_rmse'])} m / "
                       f"{_num(prior['velocity_rmse'])} m/s){vs_ml}{crlb}; {_against_prior(fp, fv)}.")
    return out


def learned_notes(ctx: Context) -> str:
    """What the learned schemes of the summary are (a paragraph under the verdicts; no numbers: those are above)."""
    schemes = {Scheme.parse(r["scheme"]) for p in summary_powers(ctx) for r in summary_rows(ctx, p)
               if is_learned(r["scheme"])}
    text = ("What they are: the paper's D-VQVAE sees only Y_m at the receive AP, whose second-order statistics carry "
            "the angle of arrival but no delay or Doppler (random data symbols; see the caveat *Why the paper's "
            "D-VQVAE struggles* below and `benchmarks/results/front_ends.md`), so it can learn at most some location "
            "from the angles.")
    if any(s.decoder == "geometry" for s in schemes):
        text += (" The geometry-aware D-VQVAE is our design, beyond the paper (`ModelConfig(front_end=\"image\", "
                 "decoder=\"geometry\")`): the receive AP also knows X (as the classical baselines assume; the "
                 "downlink of X is in the fronthaul table) and sends quantised messages of the same kind; the CPU "
                 "decodes each AP's message into a map over the area's position grid through the known AP geometry, "
                 "fuses the APs, reads the targets as heat-map peaks and the velocity by least squares on the "
                 "bistatic Doppler equations (`cfisac.models.geometry_decoder`; ablations in "
                 "`benchmarks/results/geometry_decoder.md`); with the demo's recipe (`prior_fallback`) a weak peak is "
                 "blended into the prior's best fixed guess by a learned, calibrated weight, so where it sees no "
                 "target (low power) it falls back to the prior predictor instead of reporting a noise peak.")
    return text + (" Every learned scheme trains for the preset's wall-clock budget (`Budget.train_seconds` in the "
                   "configuration below), not to convergence.")


CAVEATS = (
    "**Scale.** The `quick` preset senses 16 x 64 x 16 cells per receive AP (every 4th subcarrier, every 16th "
    "symbol of the paper's 256 x 256 frame: same bandwidth and frame length, hence the same resolution), 1/64 of "
    "the paper's cells: the Fisher information is about 64x smaller and the root-CRLB about 8x larger than at the "
    "paper's scale. Learned schemes train for a fixed wall-clock budget (minutes on 2 CPU cores), not to convergence "
    "on 16 000 scenes as in the paper.",
    "**Root-CRLB averaging.** The line is sqrt(mean over scenes and targets of CRLB_xx + CRLB_yy), the same averaging "
    "as the RMSE; a few scenes with near-singular geometry (targets near an array axis or the AP baseline) dominate "
    "it. Medians are stored in the `metrics` column. Scenes with a singular Fisher information are left out.",
    "**What the receive AP knows.** In the paper the receive AP sees only Y_m (Section III-C); the classical "
    "baselines (MUSIC, CS, ML) divide by / correlate with the transmit symbols, i.e. assume X at the receive AP. "
    "The `matched` front end of the learned schemes (beyond the paper) makes the same assumption and its "
    "downlink of X is listed in the fronthaul table; the paper's D-VQVAE (`raw`) does not.",
    "**Why the paper's D-VQVAE struggles.** Independent data symbols randomise the phase of every (subcarrier, symbol) "
    "cell of Y_m, so its second-order statistics carry the angle of arrival but no delay or Doppler; range and "
    "velocity are reachable only through X, which the decoder sees after heavy compression (docs/architecture.md). "
    "Compare it with the prior predictor (the best fixed guess of Q positions, zero velocity), drawn in every "
    "accuracy figure.",
    "**Scenes per point and intervals.** Every point is evaluated on the preset's test scenes (`n_scenes` of the "
    "row; `Budget.scheme_n_test` may give a slow scheme fewer), the same scenes for every scheme, and each RMSE "
    "comes with a 95 % bootstrap interval over those scenes (whole scenes resampled; brackets in the tables, error "
    "bars in the figures). `--scheme-seconds S` caps a classical point's wall time instead (it then keeps the first "
    "test scenes it got through: hollow markers, and a count that depends on the machine's load).",
    "**Unstated paper settings.** The paper gives no x-axis values for Figs. 6-9, 13 and 14 and no offset "
    "magnitudes for Fig. 14; the values used here are in each experiment module (`VALUES`). Eq. (30) is applied with "
    "the subcarrier index in the timing term and real-valued offsets (see `cfisac.sensing`). The fully distributed "
    "fronthaul is the paper's 96Q; our MUSIC / CS messages actually need 32 (1 + 2N) Q bits.",
)


# ---------------------------------------------------------------------------------------------------- markdown
def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _points_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One pivot table per series: a row per scheme, a column per swept value, cells ``location m / velocity m/s``
    (the root-CRLB row holds the bound); ``(k)`` marks a cell evaluated on only k test scenes."""
    from .plotting import _order

    out: list[str] = []
    n_max = max((r["n_scenes"] for r in rows if math.isfinite(r["n_scenes"])), default=0)
    for series in sorted({r["series"] for r in rows}):
        sub = [r for r in rows if r["series"] == series]
        xs = sorted({r["x_value"] for r in sub})
        schemes = sorted({r["scheme"] for r in sub}, key=_order)
        x_name = sub[0]["x_name"]
        head = ("scheme", *[f"{x_name} = {x:g}" for x in xs], "bits/AP")
        body = []
        for scheme in schemes:
            cells, bits = [], "–"
            for x in xs:
                r = next((r for r in sub if r["scheme"] == scheme and r["x_value"] == x), None)
                if r is None:
                    cells.append("")
                    continue
                p, v = (("root_crlb_position", "root_crlb_velocity") if scheme == "crlb" else
                        ("position_rmse", "velocity_rmse"))
                cell = (f"{_num(r[p])} / {_num(r[v])}" if scheme == "crlb" else
                        f"{_with_ci(r, 'position')} / {_with_ci(r, 'velocity')}")
                if math.isfinite(r["n_scenes"]) and r["n_scenes"] < n_max:
                    cell += f" ({int(r['n_scenes'])})"
                cells.append(cell)
                if scheme != "crlb":
                    bits = _bits(r["fronthaul_bits_per_ap"])
            body.append((scheme_label(scheme), *cells, bits))
        if series:
            out += [f"*Series {series}:*", ""]
        out += _md_table(head, body) + [""]
    out.append(f"Cells: location RMSE (m) / velocity RMSE (m/s) [95 % bootstrap interval over scenes] on "
               f"{int(n_max)} test scenes unless marked (k); "
               "root-CRLB row: the bound on the same scenes. Full rows (seeds, configs, wall times) in "
               "`points/<experiment>.csv`.")
    return out


def _machine() -> str:
    ident = code_identity()
    dev = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{ident['host']}, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {dev}")


def _missing(ctx: Context, name: str, mod: Any) -> list[str]:
    from .registry import store_of

    store = store_of(ctx, name)
    latest_ok = store.latest()
    latest_any = store.latest(ok_only=False)
    out = []
    for k, p in enumerate(mod.points(ctx)):
        row = latest_ok.get(p.key)
        if row is not None and row["spec_hash"] == p.spec_hash:
            continue
        last = latest_any.get(p.key)
        if last is not None and last["spec_hash"] == p.spec_hash and last["status"] != "ok":
            out.append(f"point {k} `{p.key}`: {last['status']} ({last['message'][:200]})")
        else:
            out.append(f"point {k} `{p.key}`: not run")
    return out


def write_report(ctx: Context, names: Iterable[str] | None = None, *, commands: Sequence[str] = (),
                 plots: bool = True) -> Path:
    """Write ``report.md`` and ``report.html`` under ``ctx.root`` for experiments ``names`` (default: every one
    with stored rows) and return the markdown path."""
    from .registry import EXPERIMENTS, get, load_rows, store_of

    names = [n for n in (names or EXPERIMENTS)]
    ident = code_identity()
    b = ctx.budget
    md: list[str] = [
        f"# Reproduction of Section V (Wang, Wong, Schober) — preset `{ctx.preset}`", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by cfisac {ident['code_version']} "
        f"(git {ident['git_commit'] or 'n/a'}). Machine: {_machine()}.", "",
    ]
    summary = format_summary(ctx)
    if summary_powers(ctx):
        md += ["## Summary (Fig. 6)", "", "```", summary, "```", ""]
        verdict = verdict_lines(ctx)
        if verdict:
            md += ["## How the learned schemes fare", ""] + [f"- {v}" for v in verdict] + [
                "", learned_notes(ctx), ""]
    md += ["## How to reproduce", "", "```bash"]
    md += list(commands) or [f"cfisac reproduce --preset {ctx.preset}"]
    md += [f"cfisac reproduce all --preset {ctx.preset}          # every figure and table (resumes)",
           f"cfisac reproduce fig7 --preset {ctx.preset} --list-points   # a sweep's points",
           f"cfisac reproduce fig7 --preset {ctx.preset} --point 3 --no-report   # one point (job arrays)",
           f"cfisac reproduce all --preset {ctx.preset} --report-only   # collect what is stored",
           "# a job array (e.g. SLURM) spreads a sweep over machines sharing reports/; then --report-only:",
           f"#   sbatch --array=0-$(( $(cfisac reproduce fig6 --preset {ctx.preset} --list-points | wc -l) - 1 )) "
           f"--wrap 'cfisac reproduce fig6 --preset {ctx.preset} --point $SLURM_ARRAY_TASK_ID --no-report'",
           "```", ""]
    md += ["## Configuration", "",
           f"System preset `{ctx.preset}` (`cfisac.SystemConfig.preset('{ctx.preset}')`; each point's deviations are "
           f"in the `config_diff` column of `points/<experiment>.csv`, full configs in `points/configs/`):", "",
           "```json", json.dumps(ctx.base_cfg.to_dict(), sort_keys=True), "```", "",
           f"Budget (`cfisac.experiments.BUDGETS['{ctx.preset}']`"
           + (f", overridden: {json.dumps(ctx.overrides)}" if ctx.overrides else "") + "):", "",
           "```json", json.dumps(b.to_dict(), sort_keys=True), "```", "",
           f"Seed {ctx.seed}: test scenes are dataset indices {1_000_000}..{1_000_000 + b.n_test - 1} of seed "
           f"{ctx.seed} (the same scenes for every scheme at a point, and for every point of a sweep); training "
           f"scenes 0..{b.n_train - 1}, validation {b.n_train}..{b.n_train + b.n_val - 1}. Learned schemes train for "
           f"a wall-clock budget, so their results depend on the machine's speed.", ""]
    walls: list[tuple[str, float, int]] = []
    for name in names:
        mod = get(name)
        rows = load_rows(ctx, name)
        missing = _missing(ctx, name, mod)
        if not rows and not store_of(ctx, name).path.exists():
            continue
        md += [f"## {mod.TITLE}", ""]
        if getattr(mod, "__doc__", None):
            md += [mod.__doc__.strip().split("\n\n", 1)[-1].replace("\n", " "), ""]
        if rows and plots:
            try:
                paths = mod.figures(ctx, rows)
            except Exception as err:  # noqa: BLE001 - a broken plot must not lose the report
                paths = []
                md += [f"*Figure failed: {type(err).__name__}: {err}*", ""]
            for p in paths:
                if p.suffix == ".png":
                    rel = p.relative_to(ctx.root)
                    md += [f"![{mod.TITLE}]({rel.as_posix()})", "",
                           f"[SVG]({rel.with_suffix('.svg').as_posix()})", ""]
        if rows:
            table = mod.table(ctx, rows) if hasattr(mod, "table") else _points_table(rows)
            md += table + [""]
            md += ["**Comparison with the paper**", ""] + mod.discussion(ctx, rows) + [""]
            wall = sum(r["wall_s"] for r in rows if math.isfinite(r["wall_s"]))
            walls.append((name, wall, len(rows)))
        if missing:
            md += [f"**Points missing or failed ({len(missing)}):**", ""] + [f"- {m}" for m in missing[:40]]
            if len(missing) > 40:
                md.append(f"- ... and {len(missing) - 40} more")
            md.append("")
    md += ["## Caveats and departures from the paper", ""] + [f"- {c}" for c in CAVEATS] + [""]
    if walls:
        md += ["## Wall times", ""] + _md_table(
            ("experiment", "points stored", "sum of point wall times (s)"),
            [(n, str(k), f"{w:.0f}") for n, w, k in walls]) + [""]
    path = ctx.root / "report.md"
    text = "\n".join(md) + "\n"
    page = markdown_to_html(text, title=f"cfisac reproduction ({ctx.preset})")
    write_text_atomic(path, text)
    write_text_atomic(ctx.root / "report.html", page)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``.NAME.tmp-PID`` and a rename: a killed writer, a full disk or a denied
    write leave the previous file intact. Temporaries of dead writers are removed first; an ``OSError`` becomes a
    one-line ``ValueError`` naming the file."""
    from ..data import remove_stale_temporaries

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, re.escape(f".{path.name}.tmp-") + r"(?P<pid>\d+)")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write {path}: {err.strerror or err} (the previous file, if any, is unchanged)") \
            from None


# ---------------------------------------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em}
th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}"""


def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2">', t)
    t = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", r"<em>\1</em>", t)
    return t


def markdown_to_html(text: str, *, title: str = "report") -> str:
    """The markdown subset the report uses: headings, paragraphs, ``-`` lists, pipe tables, fenced code, images,
    links, bold, italics and inline code."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            block = []
            while j < len(lines) and not lines[j].startswith("```"):
                block.append(lines[j])
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(block)) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,6}) (.*)$", line)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]] for r in rows]
            body = [c for c in cells[1:] if not all(re.fullmatch(r":?-+:?", x) for x in c)]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells[0]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(lines[i][2:])
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
            continue
        if not line.strip():
            i += 1
            continue
        para = []
        while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |```)", lines[i]):
            para.append(lines[i])
            i += 1
        out.append("<p>" + _inline(" ".join(para)) + "</p>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
