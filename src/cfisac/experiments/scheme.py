"""The schemes of the experiments: a small frozen dataclass :class:`Scheme` and its name, label and plot style.

A scheme is what one curve of an accuracy figure evaluates:

- ``"crlb"``: the root-CRLB of the test scenes (Eq. 24-28), no estimator;
- ``"prior"``: the prior predictor (the best fixed guess of Q positions, zero velocity: :mod:`cfisac.estimators.prior`);
- a classical estimator of :func:`cfisac.estimators.available` (``"music"``, ``"cs"``, ``"ml"``, ``"monostatic"``,
  ...; names may contain ``-``, e.g. ``"music-gated"``);
- a learned model ``kind`` (``"dvqvae"``, ``"dvae"``, ``"cnn"``) with an AP front end (``"raw"``: the paper's Y_m)
  and a CPU decoder (``"generic"``: the paper's Eq. 16 decoder; ``"geometry"``: the geometry-aware decoder of
  :mod:`cfisac.models.geometry_decoder`, beyond the paper).

The name of a learned scheme is ``kind[-front_end][-decoder]`` with the defaults left out: ``"dvqvae"`` (raw,
generic: the paper's model), ``"dvqvae-matched"``, ``"dvqvae-image-geometry"``. :meth:`Scheme.parse` and ``str``
round-trip these names, so stored points and report rows keep them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

__all__ = ["LEARNED_KINDS", "SCHEMES", "Scheme", "as_scheme", "is_learned", "scheme_label", "scheme_style"]

LEARNED_KINDS = ("dvqvae", "dvae", "cnn")
BOUNDS = ("crlb", "prior")  # the schemes without an estimator of their own (the bound, the constant prediction)
DEFAULT_FRONT_END = "raw"
DEFAULT_DECODER = "generic"


def _front_ends() -> list[str]:
    from ..models.front_ends import available_front_ends

    return available_front_ends()


def _decoders() -> tuple[str, ...]:
    from ..models.config import DECODERS

    return tuple(DECODERS)


def _classical() -> list[str]:
    from .. import estimators

    return [n for n in estimators.available() if n not in LEARNED_KINDS and n not in BOUNDS]


@dataclass(frozen=True)
class Scheme:
    """One scheme of the experiments (see the module docstring); ``str(scheme)`` is its name.

    ``kind``: ``"crlb"``, ``"prior"``, a classical estimator name or a learned model kind (:data:`LEARNED_KINDS`);
    ``front_end`` and ``decoder`` only for learned kinds (:class:`cfisac.models.config.ModelConfig` ``front_end`` /
    ``decoder``). A ``ValueError`` names an unknown kind, front end or decoder.
    """

    kind: str
    front_end: str = DEFAULT_FRONT_END
    decoder: str = DEFAULT_DECODER

    def __post_init__(self) -> None:
        if self.kind in LEARNED_KINDS:
            if self.front_end not in _front_ends():
                raise ValueError(f"scheme {self.kind!r}: unknown front end {self.front_end!r}; choose one of "
                                 f"{_front_ends()}")
            if self.decoder not in _decoders():
                raise ValueError(f"scheme {self.kind!r}: unknown decoder {self.decoder!r}; choose one of "
                                 f"{list(_decoders())}")
            return
        if self.kind not in BOUNDS and self.kind not in _classical():
            raise ValueError(f"unknown scheme {self.kind!r}; choose from {', '.join(BOUNDS)}, "
                             f"{', '.join(_classical())} or a learned {' / '.join(LEARNED_KINDS)}"
                             "[-<front end>][-<decoder>]")
        if (self.front_end, self.decoder) != (DEFAULT_FRONT_END, DEFAULT_DECODER):
            raise ValueError(f"scheme {self.kind!r} is not learned: it has no front end or decoder, got "
                             f"front_end={self.front_end!r}, decoder={self.decoder!r}")

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def parse(name: str) -> Scheme:
        """The scheme of a name: ``"music"``, ``"dvqvae"``, ``"dvqvae-matched"``, ``"dvqvae-image-geometry"``,
        ``"dvae-velocity-image-geometry"`` (front-end names may contain ``-``; the decoder is the last part when
        it names one). ``ValueError`` for an unknown name."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a scheme name must be a non-empty string, got {name!r}")
        kind, _, rest = name.partition("-")
        if kind not in LEARNED_KINDS:
            return Scheme(name)
        front_end, decoder = rest or DEFAULT_FRONT_END, DEFAULT_DECODER
        head, _, last = rest.rpartition("-")
        if last in _decoders():
            front_end, decoder = head or DEFAULT_FRONT_END, last
        return Scheme(kind, front_end, decoder)

    def __str__(self) -> str:
        parts = [self.kind]
        if self.front_end != DEFAULT_FRONT_END:
            parts.append(self.front_end)
        if self.decoder != DEFAULT_DECODER:
            parts.append(self.decoder)
        return "-".join(parts)

    @property
    def name(self) -> str:
        return str(self)

    @property
    def learned(self) -> bool:
        """A trained model (``dvqvae``, ``dvae``, ``cnn``), not a bound, the prior or a classical estimator."""
        return self.kind in LEARNED_KINDS

    @property
    def classical(self) -> bool:
        return not self.learned and self.kind not in BOUNDS

    @property
    def faithful(self) -> bool:
        """The paper's model: a learned kind with the raw front end and the generic decoder."""
        return self.learned and self.front_end == DEFAULT_FRONT_END and self.decoder == DEFAULT_DECODER

    def model_options(self) -> dict[str, Any]:
        """The :class:`cfisac.models.config.ModelConfig` fields this scheme sets (the rest: the preset's)."""
        if not self.learned:
            raise ValueError(f"scheme {self} is not learned: it has no model")
        return {"front_end": self.front_end, "decoder": self.decoder}

    @property
    def label(self) -> str:
        """The legend / table label: the paper's name for the paper's schemes, the front end and decoder named
        for our variants (e.g. "D-VQVAE (image front end, geometry decoder)")."""
        if str(self) in SCHEMES:
            return SCHEMES[str(self)]["label"]
        base = SCHEMES.get(self.kind, {}).get("label", self.kind).replace(" (paper)", "")
        if not self.learned:
            return base
        what = [f"{self.front_end} front end"] if self.front_end != DEFAULT_FRONT_END else []
        what += [f"{self.decoder} decoder"] if self.decoder != DEFAULT_DECODER else []
        return f"{base} ({', '.join(what)})"

    @property
    def style(self) -> dict[str, Any]:
        """Matplotlib style (colour, line style, marker, line width); a learned variant gets its own colour."""
        if str(self) in SCHEMES:
            return {k: v for k, v in SCHEMES[str(self)].items() if k != "label"}
        style = {k: v for k, v in SCHEMES.get(self.kind, dict(color="tab:gray", linestyle="-", marker="o")).items()
                 if k != "label"}
        if self.learned:
            color = _DECODER_COLORS.get(self.decoder) or _FRONT_END_COLORS.get(self.front_end, "tab:pink")
            style.update(color=color, linestyle="-")
            if self.decoder != DEFAULT_DECODER:
                style.update(marker="P", linewidth=2.0)
        return style


SCHEMES: dict[str, dict[str, Any]] = {
    "crlb": dict(label="root-CRLB", color="black", linestyle="-", marker=None, linewidth=2.0),
    "prior": dict(label="prior (best fixed guess, v = 0)", color="0.55", linestyle=":", marker=None, linewidth=1.5),
    "monostatic": dict(label="monostatic BS [13]", color="tab:brown", linestyle="--", marker="v"),
    "music": dict(label="MUSIC distributed", color="tab:orange", linestyle="--", marker="s"),
    "cs": dict(label="CS fully distributed [25]", color="tab:green", linestyle="--", marker="^"),
    "ml": dict(label="ML fusion (beyond paper)", color="tab:purple", linestyle="-.", marker="D"),
    "cnn": dict(label="CNN centralized [1]", color="tab:cyan", linestyle="-", marker="x"),
    "dvae": dict(label="D-VAE", color="tab:blue", linestyle="-", marker="o"),
    "dvqvae": dict(label="D-VQVAE (paper)", color="tab:red", linestyle="-", marker="*"),
}
_FRONT_END_COLORS = {"matched": "magenta", "covariance": "olive"}
_DECODER_COLORS = {"geometry": "darkgreen"}


def is_learned(scheme: str | Scheme) -> bool:
    """Whether the scheme (a name or a :class:`Scheme`) is a trained model."""
    return as_scheme(scheme).learned


def scheme_label(scheme: str | Scheme) -> str:
    return as_scheme(scheme).label


def scheme_style(scheme: str | Scheme) -> dict[str, Any]:
    return as_scheme(scheme).style


def as_scheme(scheme: str | Scheme) -> Scheme:
    """``scheme`` itself, or the parsed scheme of a name."""
    return scheme if isinstance(scheme, Scheme) else Scheme.parse(scheme)
