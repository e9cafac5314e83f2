"""A near-CRLB estimator: per-AP maximum likelihood plus Fisher-weighted fusion at the CPU (beyond the paper).

Registered as ``"ml"`` (``create("ml", cfg)``: the distributed scheme, ``joint=False``) and ``"ml-joint"``
(``joint=True``: the same plus a centralized maximum-likelihood refinement on the raw echoes of every AP).

What each receive AP knows
--------------------------
Like the classical baselines (:mod:`.signal_processing`), the receive AP is assumed to know the transmit signals
X (data symbols and precoders); the paper's own D-VQVAE receive APs do not (README, "Physics conventions and the
paper's slips").

The exact likelihood (Eq. 6)
----------------------------
White Gaussian noise makes the ML estimate the least-squares fit of Eq. (6). At receive AP m every path
p = (n, q) (transmit AP n, target q) contributes

    alpha_p a_r(u_p) (x) s_p,      s_p[i, t] = e^{-j 2 pi i df d_p / c} e^{+j 2 pi t dT f_p} a_t^H(w_p) x_{i,n}[t]

with ``u_p`` the AoA cosine, ``d_p = c tau_p`` the bistatic range, ``f_p`` the bistatic Doppler (Hz), ``w_p`` the
AoD cosine and ``alpha_p = beta sqrt(PL)`` a free complex gain, at the absolute comb indices ``i``, ``t`` of
:func:`cfisac.sensing.sensing_indices`. The pathloss is absorbed into the free gain (a one-to-one
reparametrisation of beta). Gains enter linearly and are eliminated by variable projection: the estimator
maximises the explained energy ``y^H S (S^H S)^-1 S^H y`` over the nonlinear parameters by Levenberg-Marquardt
with the Kaufman Jacobian, in float64, with steps limited to half a resolution cell (a trust region: refinement
stays local). At the true parameters ``2 / xi^2`` times the Gauss-Newton matrix is exactly the Fisher information
with the gains eliminated by the Schur complement, i.e. Eq. (24) (checked against :func:`cfisac.crlb` in the
tests). Every path signature and its derivatives are "atoms" ``h (x) F`` (``h`` in {a_r, d a_r / du}, ``F`` in
{s, i s, t s, ds/dw}), so Gram matrices are Hadamard products of small array and field Grams (the factorisation
of :mod:`cfisac.crlb`): one iteration costs O(P (Mr + Nt) Ns Ts + (4P)^2 Ns Ts) per AP for P paths.

Per-AP parametrisation (identifiability)
----------------------------------------
Both transmit APs' echoes overlap at every receive AP, so the per-AP model contains all N Q paths. Per target q the
AP estimates ``theta_q = [g_x, g_y, f_0 .. f_{N-1}]``: a local position and the N bistatic Dopplers (2 + N reals),
plus N complex gains. The AoA, the N bistatic delays and the N AoDs are the exact functions of g of Eq. (7)-(11),
so this is Eq. (6) restricted to AP m without relaxation, identifiable for any N >= 1 (AoA and one delay fix g;
each path adds a Doppler) except where every detected path of the target is forward scatter (target on a
transmit-receive baseline: delay, AoD, AoA and Doppler are constant along it); there the AP's position is
unreliable and the CPU's mixture fusion (below) treats it as an outlier when another AP disagrees.
The per-AP bistatic parameters (AoA, delay per transmit AP) follow from g.

Because theta_m is a smooth function ``h_m(psi)`` and the AP's model depends on psi only through it, the Fisher
information of psi is ``sum_m H_m^T J_m H_m`` with ``J_m`` the per-AP FIM (gains eliminated): fusing with ``J_m``
as the weight is asymptotically efficient (two-step / invariance argument).

Per-AP algorithm (batched over scenes, APs and candidates)
----------------------------------------------------------
1. Coarse search on an adaptive position grid (spacing half a range cell, refined near the APs where angles vary
   fast with position, see ``_grid``): for every point g and transmit AP n, the receive beam towards g, the
   symbols removed by the matched filter of the transmit beam towards g, a zero-padded DFT over subcarriers read
   at the range bin of d_n(g), a zero-padded DFT over symbols, the best Doppler, GLRT-normalised by the transmit
   beam energy. Peaks are taken from two statistics: the sum over n (non-coherent over a target's N paths) and
   the max over n. Both transmit APs send the same user symbols (cell-free joint transmission), so a strong path
   of one transmit AP also excites the other's matched filter wherever the delays match: the sum can count one
   path twice and peak metres away from the target, the max cannot.
2. Likelihood check and retries: the ``n_candidates`` best peaks of each statistic (non-maximum suppression over a
   range cell, at least 30 % of the list's best) are refined as single targets on the residual by LM; each is
   refined a second time after a global re-search of its N Dopplers at the refined position (coordinate ascent
   on the exact N-path likelihood, cross terms included: a candidate found through one strong path may carry a
   noise Doppler for the others, and LM steps cannot cross Doppler sidelobes; skipped where the re-search returns
   within ``doppler_retry_same`` grid steps of the refined Dopplers); the most likely result is kept.
   Then a second coarse search with the winner's strongest path cancelled, whose candidates compete again on the
   same residual with all paths: a target on a transmit-receive baseline has a dominant forward-scatter path that
   ranks the whole baseline alike (and leaks into the other transmit AP's matched filter), so every first-stage
   candidate may sit metres away on the baseline, a local maximum LM cannot leave (``_search``). The second search
   runs only where the winner explains some path below ``second_search_level`` (default the detection threshold):
   a winner off the target fits the forward-scatter path, not the others; and only where the winner's strongest
   path reaches ``second_search_floor`` (default the detection threshold), where no other slot of the problem is
   detected yet: a winner below it fits noise and holds no dominant path to cancel (most problems at <= 30 dBm;
   next to a detected slot the noise slot's fit would move the detected one; benchmarks/results/ml.md).
3. Successive cancellation: target by target on the residual, then a joint LM over all targets found so far.
4. RELAX rounds (Q > 1): each target is searched again (grid + candidates, its current value competing) with the
   others cancelled; a round is kept only where the joint likelihood increased (opt-in ``relax_floor``: only on
   problems with a slot whose strongest path reaches it; changes results at 30 dBm, see ml.md).
5. Model-order selection (two-level GLRT): a target slot is detected when its strongest path's GLRT statistic
   (drop of the explained energy when it alone is removed, over xi^2; Exp(1) under noise) reaches
   ``detection_threshold`` (default ``log(cells / false_alarm)``, the level a noise peak maximised over the
   search's resolution cells exceeds with probability ``false_alarm``); a further path of a detected slot only
   needs ``path_threshold`` (default ``log(Doppler cells / false_alarm)``: its delay, AoA and AoD follow from the
   target's position, only its Doppler is searched). Paths below leave the model and the rest is refined again.
   Undetected paths are sent as NaN (no extra bits).

Message (float32): per target ``g_x, g_y, f_{0..N-1}, Re/Im alpha_{0..N-1}``: ``32 (2 + 3N) Q`` bits per AP and
update (256 Q for N = 2; the paper's fully distributed count is 96 Q). The CPU knows X, so it recomputes
``J_m`` from the message (no y needed).

CPU fusion
----------
Target slots are associated across APs (Hungarian on the local positions), then each target's psi maximises a
Gaussian / uniform mixture likelihood of its messages (an AP's message is either an inlier with covariance
``J^-1`` or an outlier uniform over the area and the Doppler span), solved exactly by bounded weighted least
squares on every inlier subset of APs; the association is redone on whitened distances and the fusion repeated.
Positions are bounded to the area and velocities to the prior box, as for the classical baselines.

``joint=True`` adds the centralized ML: LM on psi over the raw echoes of all APs (gains per (n, m, q)
eliminated), started from the fused psi, from every AP's local estimate and from the peaks of the CPU's own coarse
search (the per-AP statistics summed over APs on the common grid: all N M paths non-coherently); the start
reaching the highest likelihood wins (the CPU's likelihood check). Its fronthaul is the centralized one,
``64 Mr Ns Ts`` bits per AP.

Targets close in every domain
-----------------------------
When two targets share an AoA beam, a range cell and a Doppler cell at every AP, the grid shows one peak; the
second detection then locks on the residual of the pair or on noise, the joint LM pulls the two estimates into the
pair's cell, and the gains' Gram matrix becomes nearly singular (it is regularised, never NaN). Both estimates end
up near the pair (within the area and the speed box), or one of them elsewhere on noise; the CRLB there is itself
huge or singular. Targets separated in any one domain (angle, range or Doppler at some AP) are resolved.

Limits: the threshold effect. The CRLB is a small-error bound; when a target's paths are too weak to be detected
(per-path SNR below ~12 dB), errors are outliers over the area and the RMSE leaves the bound by orders of magnitude
(on the ``quick`` preset this is the regime up to about 40 dBm; see ``benchmarks/results/ml.md``). Clutter (Eq. 29)
and clock offsets (Eq. 30) are not in the likelihood (model mismatch when the scenes carry them). A single
transmit/receive AP pair cannot identify the velocity vector: ``N M = 1`` is refused.

Layout: :mod:`.model` (geometry, path systems, LM), :mod:`.search` (grid, coarse maps, peaks, Doppler re-search),
:mod:`.ap_stage` (the per-AP detection loop), :mod:`.fusion` (the CPU's mixture fusion), :mod:`.joint`
(the centralized refinement), :mod:`.estimator` (options, messages, pipeline). The design history is in
``docs/ml_estimator.md``.
"""

from .estimator import ApMessages, MLEstimate, MLEstimator
from .model import PathSystem, _Geometry, path_signals, path_system

__all__ = ["ApMessages", "MLEstimate", "MLEstimator", "PathSystem", "_Geometry", "path_signals", "path_system"]
