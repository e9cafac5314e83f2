"""Experiments of Section V (cfisac.experiments, cfisac reproduce): every module end to end on the tiny preset with
tiny budgets, well-formed outputs, the root-CRLB law in P, resumable sweeps, single points, the report."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from cfisac.cli import main
from cfisac.experiments import (
    COLUMNS,
    EXPERIMENTS,
    PointStore,
    get,
    load_rows,
    make_context,
    run_experiment,
    run_points,
    write_report,
)
from cfisac.experiments.common import monostatic_config
from cfisac.experiments.evaluation import TEST_START, evaluation_data
from cfisac.experiments.report import format_summary, markdown_to_html
from cfisac.experiments.store import Point, spec_hash

# A handful of scenes and one epoch of 8 training scenes: the code paths of the quick / paper presets in seconds.
TINY = dict(n_test=3, eval_batch=3, n_train=8, n_val=2, train_seconds={"*": 60.0}, max_epochs=1, batch_size=8,
            classical=(), learned=("dvqvae", "dvqvae-image-geometry"), crlb_max_scenes=3)


def tiny_ctx(root, **kw):
    return make_context("tiny", root=root, log=lambda s: None, **{**TINY, **kw})


@pytest.fixture(scope="module")
def all_run(tmp_path_factory, one_thread):
    """Every experiment once on the tiny preset (shared by the tests below). To save time the training's own loss
    plot (tested with the training code) is skipped."""
    import cfisac.train

    root = tmp_path_factory.mktemp("reports")
    ctx = tiny_ctx(root)
    ctx.progress = False
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cfisac.train, "plot_loss", lambda *a, **k: None)
        counts = {name: run_experiment(name, ctx) for name in EXPERIMENTS}
        report = write_report(ctx)
        yield ctx, counts, report


def _csv_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_every_experiment_runs_and_stores_well_formed_rows(all_run):
    ctx, counts, _ = all_run
    for name in EXPERIMENTS:
        assert counts[name]["failed"] == 0, name
        header, rows = _csv_rows(ctx.root / "points" / f"{name}.csv")
        assert tuple(header) == COLUMNS
        assert len(rows) == len(get(name).points(ctx)) == counts[name]["done"] > 0
        for r in rows:
            assert r["status"] == "ok" and r["experiment"] == name and r["code_version"]
            assert (ctx.root / "points" / "configs" / f"{r['config_hash']}.json").is_file()
            assert float(r["wall_s"]) >= 0
        parsed = load_rows(ctx, name)
        assert len(parsed) == len(rows)
        for r in parsed:
            if name in ("fig6", "fig7", "fig8", "fig9", "fig13", "fig14", "fig12"):
                cols = ("root_crlb_position", "root_crlb_velocity") if r["scheme"] == "crlb" else (
                    "position_rmse", "velocity_rmse", "root_crlb_position", "root_crlb_velocity")
                for c in cols:
                    assert math.isfinite(r[c]) and r[c] > 0, (name, r["key"], c)
                assert r["n_scenes"] == 3


def test_accuracy_rows_are_real_errors_and_bounds(all_run):
    ctx, _, _ = all_run
    rows = {r["key"]: r for r in load_rows(ctx, "fig6")}
    prior = rows["power_dbm=30|scheme=prior"]
    # the prior predicts its best fixed guess, for Q = 1 (tiny) the area's centre, and zero velocity: recompute its
    # RMSE from the test scenes by hand
    data = evaluation_data(ctx, ctx.base_cfg.replace(power_dbm=30.0))
    pos = data["positions"].double()
    rmse = float(((pos - 50.0) ** 2).sum(-1).mean().sqrt())
    vrmse = float((data["velocities"].double() ** 2).sum(-1).mean().sqrt())
    assert prior["position_rmse"] == pytest.approx(rmse, rel=1e-9)
    assert prior["velocity_rmse"] == pytest.approx(vrmse, rel=1e-9)
    assert prior["fronthaul_bits_per_ap"] == 0
    # every scheme at a point carries the root-CRLB of the same scenes
    crlb = rows["power_dbm=30|scheme=crlb"]
    assert prior["root_crlb_position"] == crlb["root_crlb_position"]
    assert crlb["root_crlb_position"] < prior["position_rmse"]
    learned = rows["power_dbm=30|scheme=dvqvae"]
    assert learned["fronthaul_bits_per_ap"] > 0 and learned["position_rmse"] > 0


def test_root_crlb_decreases_with_power_like_one_over_sqrt_p(tmp_path):
    from cfisac.experiments import fig6

    ctx = tiny_ctx(tmp_path)
    sw = fig6.sweep(ctx)
    sw.values = (0.0, 10.0, 20.0, 30.0)
    sw.schemes = []
    store = PointStore(tmp_path, "fig6")
    run_points(store, sw.points(ctx), log=lambda s: None)
    rows = sorted(store.latest().values(), key=lambda r: r["x_value"])
    pos = [r["root_crlb_position"] for r in rows]
    vel = [r["root_crlb_velocity"] for r in rows]
    assert all(b < a for a, b in zip(pos, pos[1:], strict=False))
    assert all(b < a for a, b in zip(vel, vel[1:], strict=False))
    # the Fisher information is proportional to the echo SNR, i.e. to P: the bound falls by about sqrt(10) per 10 dB
    for a, b in zip(pos, pos[1:], strict=False):
        assert a / b == pytest.approx(10**0.5, rel=0.35)


def test_figures_and_report(all_run):
    ctx, _, report = all_run
    for name in ("fig6", "fig7", "fig8", "fig9", "fig10", "fig11", "fig12", "fig13", "fig14"):
        for ext in ("png", "svg"):
            f = ctx.figures_dir / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 2000, f
    text = report.read_text()
    for name in EXPERIMENTS:
        assert get(name).TITLE in text
    assert "**Paper:**" in text and "cfisac reproduce" in text and "Machine:" in text
    assert "Points missing" not in text
    # the plain verdict on the learned schemes: their RMSE as a fraction of the prior predictor's, from the rows
    from cfisac.experiments.report import summary_powers, summary_rows, verdict_lines
    from cfisac.experiments.scheme import is_learned

    verdict = verdict_lines(ctx)
    assert "## How the learned schemes fare" in text and all(v in text for v in verdict)
    p0 = summary_powers(ctx)[-1]
    rows = summary_rows(ctx, p0)
    prior = next(r for r in rows if r["scheme"] == "prior")
    learned = [r for r in rows if is_learned(r["scheme"])]
    assert learned and len([v for v in verdict if v.startswith(f"At {p0:g} dBm")]) == len(learned)
    r = learned[0]
    frac = f"{r['position_rmse'] / prior['position_rmse']:.2f} / {r['velocity_rmse'] / prior['velocity_rmse']:.2f}"
    assert any(frac + " of the prior predictor's RMSE" in v for v in verdict), (frac, verdict)
    html = (ctx.root / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and '<img alt="' in html and "<table>" in html
    summary = format_summary(ctx)
    assert "D-VQVAE" in summary and "root-CRLB" in summary and "fronthaul" in summary
    # the fronthaul table reproduces the paper's numbers at the paper's system
    fh = {(r["series"], r["scheme"]): r for r in load_rows(ctx, "fronthaul")}
    assert fh[("paper", "dvqvae")]["fronthaul_bits_per_ap"] == 81_920
    assert fh[("paper", "cnn")]["fronthaul_bits_per_ap"] == 67_108_864
    t3 = load_rows(ctx, "table3")
    assert all(r["metrics"]["encoder_ms"] > 0 and r["metrics"]["decoder_ms"] > 0 for r in t3)


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    """Kill a sweep after k points (an exception injected), rerun it: no finished point is recomputed and the final
    table equals that of an uninterrupted run."""
    from cfisac.experiments import fig6

    class Killed(BaseException):
        pass

    def sweep_points(ctx, calls, kill_at=None):
        sw = fig6.sweep(ctx)
        sw.values = (10.0, 20.0, 30.0)
        sw.schemes = ["prior"]
        pts = sw.points(ctx)
        for k, p in enumerate(pts):
            inner = p.run

            def run(inner=inner, key=p.key, k=k):
                if k == kill_at:
                    raise Killed
                calls.append(key)
                return inner()

            p.run = run
        return pts

    ctx = tiny_ctx(tmp_path / "a")
    store = PointStore(ctx.root, "fig6", base_cfg=ctx.base_cfg)
    first: list[str] = []
    with pytest.raises(Killed):
        run_points(store, sweep_points(ctx, first, kill_at=4), log=lambda s: None)
    assert len(first) == 4 and len(store.rows()) == 4
    second: list[str] = []
    counts = run_points(store, sweep_points(tiny_ctx(tmp_path / "a"), second), log=lambda s: None)
    assert counts == {"done": 2, "skipped": 4, "failed": 0}
    assert not set(first) & set(second) and len(second) == 2
    ref_ctx = tiny_ctx(tmp_path / "b")
    ref = PointStore(ref_ctx.root, "fig6", base_cfg=ref_ctx.base_cfg)
    run_points(ref, sweep_points(ref_ctx, []), log=lambda s: None)
    volatile = {"wall_s", "finished_at", "point", "metrics", "row_sha256"}  # the checksum covers wall_s

    def table(s):
        return {k: {c: v for c, v in r.items() if c not in volatile} for k, r in s.latest().items()}

    assert table(store) == table(ref)
    # --force recomputes; the last row of a key wins
    again: list[str] = []
    run_points(store, sweep_points(tiny_ctx(tmp_path / "a"), again), force=True, log=lambda s: None)
    assert len(again) == 6 and len(store.rows()) == 12


def test_failed_point_is_recorded_and_retried(tmp_path):
    ctx = tiny_ctx(tmp_path)
    store = PointStore(tmp_path, "x", base_cfg=ctx.base_cfg)
    state = {"fail": True}

    def run():
        if state["fail"]:
            raise RuntimeError("boom")
        return {"position_rmse": 1.0}

    pts = [Point(key="a", scheme="s", x_name="x", x_value=1.0, cfg=ctx.base_cfg, run=run)]
    assert run_points(store, pts, log=lambda s: None)["failed"] == 1
    assert store.rows()[0]["status"] == "failed" and "boom" in store.rows()[0]["message"]
    assert store.latest() == {}
    state["fail"] = False
    assert run_points(store, pts, log=lambda s: None) == {"done": 1, "skipped": 0, "failed": 0}
    assert store.latest()["a"]["position_rmse"] == 1.0
    # a changed spec (e.g. another budget) makes the stored row stale
    pts[0].spec = {"n_test": 99}
    assert run_points(store, pts, log=lambda s: None)["done"] == 1
    with pytest.raises(ValueError, match="out of range"):
        run_points(store, pts, only=[3], log=lambda s: None)
    with pytest.raises(ValueError, match="unknown result columns"):
        store.append(pts[0], 0, {"bogus": 1}, wall_s=0.0)


def test_cli_single_point_list_and_report_only(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["reproduce", "fig6", "--preset", "tiny", "--out", str(out), "--n-test", "2", "--schemes", "prior",
            "--no-progress"]
    assert main([*base, "--list-points"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert listed[0] == "fig6 0 power_dbm=10|scheme=crlb" and len(listed) == 4
    assert listed[1] == "fig6 1 power_dbm=10|scheme=prior"
    assert main([*base, "--point", "1", "--no-report"]) == 0
    rows = PointStore(out, "fig6").rows()
    assert [r["key"] for r in rows] == ["power_dbm=10|scheme=prior"] and rows[0]["point"] == "1"
    assert not (out / "report.md").exists()
    assert main([*base, "--report-only"]) == 0
    text = (out / "report.md").read_text()
    assert "point 0 `power_dbm=10|scheme=crlb`: not run" in text
    assert main(["reproduce", "fig99", "--preset", "tiny", "--out", str(out)]) == 2
    assert "unknown experiment 'fig99'" in capsys.readouterr().err
    assert main([*base, "--point", "9"]) == 2


def test_monostatic_sees_the_same_targets_and_spec_hash_is_stable(tmp_path):
    ctx = tiny_ctx(tmp_path)
    cfg = ctx.base_cfg
    mono = monostatic_config(cfg)
    assert mono.tx_positions == mono.rx_positions == ((50.0, 0.0),)
    a, b = evaluation_data(ctx, cfg), evaluation_data(ctx, mono)
    assert torch.equal(a["positions"], b["positions"]) and torch.equal(a["velocities"], b["velocities"])
    assert b["y"].shape[1] == 1 and a["y"].shape[1] == cfg.n_rx
    assert spec_hash({"a": 1, "cfg": cfg}) == spec_hash({"cfg": cfg, "a": 1}) != spec_hash({"a": 2, "cfg": cfg})
    assert TEST_START >= 1_000_000


def test_streamed_test_scenes_equal_the_cached_ones(tmp_path, monkeypatch):
    """Large (paper-scale) test sets are simulated chunk by chunk instead of cached: same scenes, same CRLB."""
    from cfisac.experiments import evaluation

    ctx = tiny_ctx(tmp_path)
    cfg = ctx.base_cfg
    cached = evaluation.evaluation_batch(ctx, cfg, 1, 3)
    bound = evaluation.crlb_of_scenes(ctx, cfg)
    monkeypatch.setattr(evaluation, "CACHE_BYTES", 0)
    ctx2 = tiny_ctx(tmp_path)
    streamed = evaluation.evaluation_batch(ctx2, cfg, 1, 3)
    for k in ("y", "x", "positions", "velocities"):
        assert torch.equal(cached[k], streamed[k]), k
    assert evaluation.crlb_of_scenes(ctx2, cfg) == bound


def test_markdown_to_html_subset():
    html = markdown_to_html("# T\n\npara **b** `c`\n\n- x\n- y\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\n<k>\n```\n"
                            "![alt](f.png)")
    assert "<h1>T</h1>" in html and "<strong>b</strong>" in html and "<code>c</code>" in html
    assert "<ul><li>x</li><li>y</li></ul>" in html and "<td>1</td>" in html and "&lt;k&gt;" in html
    assert '<img alt="alt" src="f.png">' in html


def test_scheme_names_round_trip_and_unknown_names_are_refused():
    from cfisac.experiments.scheme import Scheme

    names = ("dvqvae", "dvqvae-matched", "dvqvae-image-geometry", "dvae-velocity-image-geometry", "dvqvae-geometry",
             "cnn", "music", "music-gated-reference", "ml-joint", "prior", "crlb")
    for name in names:
        assert str(Scheme.parse(name)) == name
    geo = Scheme.parse("dvqvae-image-geometry")
    assert (geo.kind, geo.front_end, geo.decoder) == ("dvqvae", "image", "geometry")
    assert geo.learned and not geo.faithful and Scheme.parse("dvqvae").faithful
    assert Scheme.parse("dvae-velocity-image").front_end == "velocity-image"
    assert geo.model_options() == {"front_end": "image", "decoder": "geometry"}
    assert not Scheme.parse("music-gated").learned and Scheme.parse("music-gated").classical
    assert "geometry decoder" in geo.label and "image front end" in geo.label
    assert geo.style["color"] != Scheme.parse("dvqvae").style["color"]
    for bad, needle in (("nosuch", "'nosuch'"), ("dvqvae-nosuch", "'nosuch'"), ("music-x", "'music-x'"),
                        ("", "non-empty")):
        with pytest.raises(ValueError, match=needle):
            Scheme.parse(bad)
    with pytest.raises(ValueError, match="not learned"):
        Scheme("music", front_end="image")


def test_learned_scheme_trains_the_model_config_of_its_name(tmp_path):
    from cfisac.experiments.learned import model_config, training_spec

    ctx = tiny_ctx(tmp_path)
    m = model_config(ctx, "dvqvae-image-geometry")
    assert (m.front_end, m.decoder) == ("image", "geometry")
    assert model_config(ctx, "dvqvae").decoder == "generic"
    spec = training_spec(ctx, "dvqvae-image-geometry", [ctx.base_cfg])
    assert spec["kind"] == "dvqvae" and spec["model"]["decoder"] == "geometry"
    # the budget's recipe of that scheme (quantizer initialisation, learning rate); the paper's model keeps 1e-4
    assert m.kmeans_init and spec["model"]["kmeans_init"] and spec["learning_rate"] == 2e-3
    assert m.decoder_options == {"velocity_weight": 4.0, "velocity_branch": "latent", "prior_fallback": True}
    assert spec["model"]["decoder_options"] == m.decoder_options
    assert spec["batch_size"] == ctx.budget.recipe_of("dvqvae-image-geometry").batch_size == 8
    paper = training_spec(ctx, "dvqvae", [ctx.base_cfg])
    assert paper["learning_rate"] == 1e-4 and paper["batch_size"] == ctx.budget.batch_size
    assert not model_config(ctx, "dvqvae").kmeans_init
    assert spec_hash(spec) != spec_hash(training_spec(ctx, "dvqvae-image", [ctx.base_cfg]))
    with pytest.raises(ValueError, match="not a learned scheme"):
        model_config(ctx, "music")


def test_cli_evaluation_and_experiment_evaluation_share_the_root_crlb(one_thread):
    """``evaluate`` (cfisac evaluate) averages the bound like the RMSE, exactly as the experiments do."""
    from cfisac import crlb, estimators
    from cfisac.config import SystemConfig
    from cfisac.data import simulate_batch
    from cfisac.experiments.evaluation import crlb_summary, evaluate, root_crlb_per_scene
    from cfisac.scene import sample_scenes

    cfg = SystemConfig.preset("tiny")
    res = evaluate(estimators.create("prior", cfg), cfg, n_test=3, seed=5, batch_size=2, with_crlb=True)
    scenes = sample_scenes(cfg, 3, 5, indices=torch.arange(3))
    x = simulate_batch(cfg, 5, [0, 1, 2])["x"]
    want = crlb.average_root_crlb(crlb.crlb(cfg, scenes, x))
    assert res["root_crlb"]["position"] == pytest.approx(want[0], rel=1e-9)
    assert res["root_crlb"]["velocity"] == pytest.approx(want[1], rel=1e-9)
    assert res["root_crlb"]["position"] < res["prior"]["position_rmse"]
    pos, vel = root_crlb_per_scene(cfg, scenes, x)
    assert crlb_summary(pos, vel)["root_crlb_position"] == pytest.approx(want[0], rel=1e-9)
    with pytest.raises(ValueError, match="singular for all 3"):
        crlb_summary(torch.full((3,), math.nan, dtype=torch.float64), vel)


def test_report_says_whose_design_each_learned_scheme_is_and_how_it_compares():
    from cfisac.experiments.report import _against_prior, role

    assert role("dvqvae").startswith("the paper's model") and role("cnn").startswith("as in the paper")
    assert role("dvqvae-image-geometry").startswith("our design, beyond the paper")
    assert "image front end" in role("dvqvae-image-geometry") and "geometry" in role("dvqvae-image-geometry")
    assert role("dvqvae-matched") == "our design, beyond the paper (the matched front end)"
    assert _against_prior(0.3, 0.95) == "location learned; velocity not learned (within 10% of the prior predictor)"
    assert _against_prior(1.3, 0.5) == "velocity learned; location worse than the prior predictor"


def test_fig6_learned_models_train_once_on_every_power_of_the_sweep(all_run):
    """With Budget.power_training="pooled" (the tiny budget) every learned scheme of Fig. 6 is one model trained on
    samples cycling through the sweep's powers (TrainConfig.power_dbm_pool), shared by all its points and by Fig. 10;
    with "reference" (quick) one model trained at P0; pooling other fields is refused."""
    from cfisac.checkpoint import load_checkpoint
    from cfisac.experiments import fig6, fig10
    from cfisac.experiments.learned import checkpoint_dir, power_pool

    ctx, _, _ = all_run
    values = fig6.VALUES["tiny"]
    for scheme in ctx.budget.learned:
        specs = [p.spec["training"] for p in fig6.points(ctx) if p.scheme == scheme]
        assert len(specs) == len(values) and all(s == specs[0] for s in specs)
        assert [c["power_dbm"] for c in specs[0]["train_cfgs"]] == list(values)
        assert [p.spec["training"] for p in fig10.points(ctx) if p.scheme == scheme] == [specs[0]]
        ck = load_checkpoint(checkpoint_dir(ctx, scheme, specs[0]))  # the model the experiments trained
        assert ck.tcfg.power_dbm_pool == tuple(values)
    quick = make_context("quick", root=ctx.root / "quick-points", log=lambda s: None)  # points only: nothing runs
    assert quick.budget.power_training == "reference"
    for scheme in quick.budget.learned:
        specs = [p.spec["training"] for p in fig6.points(quick) if p.scheme == scheme]
        k = quick.budget.recipe_of(scheme).lowest_power_every  # the geometry scheme: 1 sample in k at 10 dBm
        want = [48.0] * (k - 1) + [10.0] if k else [48.0]
        assert all(s == specs[0] for s in specs) and [c["power_dbm"] for c in specs[0]["train_cfgs"]] == want
    cfg = ctx.base_cfg
    assert power_pool([cfg]) == ()
    assert power_pool([cfg.replace(power_dbm=5.0), cfg]) == (5.0, cfg.power_dbm)
    with pytest.raises(ValueError, match="n_targets differs"):
        power_pool([cfg, cfg.replace(n_targets=cfg.n_targets + 1, power_dbm=5.0)])


def test_lowest_power_every_trains_fig6_models_on_p0_and_the_lowest_power(tmp_path):
    from cfisac.experiments import fig6
    from cfisac.experiments.common import Recipe
    from cfisac.experiments.learned import power_pool

    ctx = make_context("quick", root=tmp_path, log=lambda s: None)
    sw = fig6.sweep(ctx)
    cfgs, _ = sw.train_spec(ctx, "dvqvae-image-geometry", 20.0, "")  # the demo's recipe: k = 8
    assert power_pool(cfgs) == (48.0,) * 7 + (10.0,)
    assert [c.power_dbm for c in sw.train_spec(ctx, "dvqvae", 20.0, "")[0]] == [48.0]  # no recipe: P0 alone
    ctx4 = make_context("quick", root=tmp_path, log=lambda s: None,
                        recipes={"dvqvae": Recipe(lowest_power_every=4)})
    assert power_pool(fig6.sweep(ctx4).train_spec(ctx4, "dvqvae", 60.0, "")[0]) == (48.0, 48.0, 48.0, 10.0)
    # every point of the sweep trains the same model (one checkpoint hash), noted in the discussion
    pts = [p for p in fig6.points(ctx) if p.scheme == "dvqvae-image-geometry"]
    assert len({str(p.spec["training"]) for p in pts}) == 1 and len(pts) == 6
    assert any("one training sample in 8 at 10 dBm" in line for line in fig6.discussion(ctx, []))
    for bad in (1, -2, 2.5, True):
        with pytest.raises(ValueError, match="lowest_power_every"):
            Recipe(lowest_power_every=bad)
