"""Facts drawn from stored rows for the report's comparison with the paper (what our curves show, in numbers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .scheme import Scheme, is_learned, scheme_label

__all__ = ["compare_lines", "curve", "fmt_pair", "growth_line", "monotone", "ratio_line", "row_at", "scheme_label"]


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def curve(rows: Sequence[dict[str, Any]], scheme: str, series: str = "") -> list[tuple[float, float, float]]:
    """[(x, position, velocity)] of one scheme (the root-CRLB columns for ``crlb``), sorted by x."""
    pc, vc = ("root_crlb_position", "root_crlb_velocity") if scheme == "crlb" else ("position_rmse", "velocity_rmse")
    out = [(r["x_value"], r[pc], r[vc]) for r in rows if r["scheme"] == scheme and r["series"] == series]
    return sorted(out)


def row_at(rows: Sequence[dict[str, Any]], scheme: str, x: float, series: str = "") -> dict[str, Any] | None:
    for r in rows:
        if r["scheme"] == scheme and r["series"] == series and abs(r["x_value"] - x) < 1e-9:
            return r
    return None


def fmt_pair(p: float, v: float) -> str:
    ps = f"{p:.3g} m" if _ok(p) else "n/a"
    vs = f"{v:.3g} m/s" if _ok(v) else "n/a"
    return f"{ps} / {vs}"


def monotone(values: Sequence[float], *, decreasing: bool, rtol: float = 0.0) -> bool:
    vals = [v for v in values if _ok(v)]
    if decreasing:
        return all(b <= a * (1 + rtol) for a, b in zip(vals, vals[1:], strict=False))
    return all(b >= a * (1 - rtol) for a, b in zip(vals, vals[1:], strict=False))


def compare_lines(rows: Sequence[dict[str, Any]], *, reference_x: float, x_unit: str, series: str = "",
                  few_note: bool = True) -> list[str]:
    """Ranking at the reference x, factor above the root-CRLB, and which schemes do not beat the prior
    (``few_note``: first say which schemes were evaluated on few scenes)."""
    lines: list[str] = []
    prior = row_at(rows, "prior", reference_x, series)
    few = sorted({scheme_label(r["scheme"]) for r in rows if r["series"] == series and _ok(r.get("n_scenes"))
                  and r["n_scenes"] < 20 and r["scheme"] != "crlb"})
    if few and few_note:
        lines.append("- **Few scenes:** " + ", ".join(few) + " were evaluated on fewer than 20 test scenes at some "
                     "points (the preset's test-scene budget, `Budget.scheme_n_test`, or a per-point time cap): "
                     "those RMSEs are rough; see their intervals.")
    crlb = row_at(rows, "crlb", reference_x, series)
    at = [r for r in rows if r["series"] == series and abs(r["x_value"] - reference_x) < 1e-9
          and r["scheme"] not in ("crlb", "prior") and _ok(r["position_rmse"])]
    if not at:
        return lines
    at.sort(key=lambda r: r["position_rmse"])
    parts = []
    for r in at:
        txt = f"{scheme_label(r['scheme'])} {fmt_pair(r['position_rmse'], r['velocity_rmse'])}"
        if crlb is not None and _ok(crlb["root_crlb_position"]) and crlb["root_crlb_position"] > 0:
            txt += f" ({r['position_rmse'] / crlb['root_crlb_position']:.3g}x root-CRLB in location)"
        parts.append(txt)
    lines.append(f"- **Ours at {reference_x:g} {x_unit}, by location RMSE:** " + "; ".join(parts) + ".")
    if prior is not None and _ok(prior["position_rmse"]):
        weak = [r for r in at if r["position_rmse"] >= 0.9 * prior["position_rmse"]]
        weak_v = [r for r in at if _ok(r["velocity_rmse"]) and _ok(prior["velocity_rmse"])
                  and r["velocity_rmse"] >= 0.9 * prior["velocity_rmse"]]
        txt = (f"- **Prior predictor** (the best fixed guess, zero velocity): "
               f"{fmt_pair(prior['position_rmse'], prior['velocity_rmse'])}.")
        if weak:
            txt += " Within 10 % of it (or worse) in location: " + ", ".join(
                scheme_label(r["scheme"]) for r in weak) + "."
        if weak_v:
            txt += " In velocity: " + ", ".join(scheme_label(r["scheme"]) for r in weak_v) + "."
        if weak or weak_v:
            txt += " Such a scheme has extracted (almost) nothing from the echoes for that quantity."
        raw_learned = [r for r in weak if Scheme.parse(r["scheme"]).faithful]
        if raw_learned:
            txt += (" For the paper's learned schemes (raw echoes at the receive AP) this is expected at our scale: "
                    "random data symbols leave no delay / Doppler in the second-order statistics of Y_m (see the "
                    "caveats at the end).")
        lines.append(txt)
    learned = [r for r in at if is_learned(r["scheme"])]
    classical = [r for r in at if not is_learned(r["scheme"])]
    if learned and classical:
        best_l = min(learned, key=lambda r: r["position_rmse"])
        best_c = min(classical, key=lambda r: r["position_rmse"])
        verdict = "agrees with" if best_l["position_rmse"] < best_c["position_rmse"] else "disagrees with"
        near_prior = prior is not None and _ok(prior["position_rmse"]) and min(
            best_l["position_rmse"], best_c["position_rmse"]) >= 0.8 * prior["position_rmse"]
        if near_prior:
            verdict = "no meaningful ranking: both are near the prior predictor, unlike"
        lines.append(f"- **Learned vs classical (location):** best learned {scheme_label(best_l['scheme'])} "
                     f"{best_l['position_rmse']:.3g} m vs best classical {scheme_label(best_c['scheme'])} "
                     f"{best_c['position_rmse']:.3g} m: {verdict} the paper's ranking.")
    return lines


def ratio_line(rows: Sequence[dict[str, Any]], a: str, b: str, x: float, x_unit: str, claim: str,
               series: str = "") -> list[str]:
    ra, rb = row_at(rows, a, x, series), row_at(rows, b, x, series)
    if ra is None or rb is None or not (_ok(ra["position_rmse"]) and _ok(rb["position_rmse"])):
        return []
    rp = ra["position_rmse"] / rb["position_rmse"]
    both = _ok(ra["velocity_rmse"]) and _ok(rb["velocity_rmse"])
    rv = ra["velocity_rmse"] / rb["velocity_rmse"] if both else math.nan
    prior = row_at(rows, "prior", x, series)
    if prior is not None and min(ra["position_rmse"], rb["position_rmse"]) >= 0.8 * prior["position_rmse"]:
        claim += "; both are near the prior predictor here, so the ratio says nothing about the claim"
    return [f"- **{scheme_label(a)} / {scheme_label(b)} at {x:g} {x_unit}:** location RMSE ratio {rp:.3g}, velocity "
            f"{rv:.3g} ({claim})."]


def growth_line(rows: Sequence[dict[str, Any]], name: str, values: Sequence[float], series: str = "") -> list[str]:
    """How each scheme's RMSEs change from the first to the last value of the sweep (factors)."""
    lo, hi = values[0], values[-1]
    parts = []
    schemes = []
    for r in rows:
        if r["scheme"] not in schemes:
            schemes.append(r["scheme"])
    for s in schemes:
        a, b = row_at(rows, s, lo, series), row_at(rows, s, hi, series)
        if a is None or b is None:
            continue
        pc, vc = ("root_crlb_position", "root_crlb_velocity") if s == "crlb" else ("position_rmse", "velocity_rmse")
        fp = b[pc] / a[pc] if _ok(a[pc]) and _ok(b[pc]) and a[pc] > 0 else math.nan
        fv = b[vc] / a[vc] if _ok(a[vc]) and _ok(b[vc]) and a[vc] > 0 else math.nan
        if not (_ok(fp) or _ok(fv)):
            continue
        parts.append(f"{scheme_label(s)} location x{fp:.2g}" + (f", velocity x{fv:.2g}" if _ok(fv) else ""))
    if not parts:
        return []
    return [f"- **Ours, from {name} = {lo:g} to {hi:g}** (RMSE at the last value / at the first): " + "; ".join(parts)
            + "."]
