"""Reproducible datasets of (X, Y, psi): simulated on the fly, or cached to disk in HDF5.

Sample d of a dataset is a pure function of ``(cfg, seed, d)`` (see :mod:`cfisac.seeding`): the same whatever the
batch size, DataLoader worker count or machine. :class:`SensingDataset` simulates on the fly (DataLoader workers
parallelise it; ``__getitems__`` simulates a whole batch at once). :func:`write_hdf5` caches a dataset to disk:
written to a temporary file and renamed atomically, with the config stored inside and a SHA-256 per chunk of rows
and array, so that a truncated or corrupted file raises a clear error (:func:`open_hdf5`) instead of being read.
A further SHA-256 covers the attributes (config, seed, start, n, chunk, format version) and the ``indices``: an
edited attribute is refused like edited data; every such error names the file and says to delete and re-create it.
A killed :func:`write_hdf5` resumes: the next call with the same arguments reuses the chunks already simulated. The
temporary file of a killed writer (``.NAME.h5.tmp-PID``) is removed by the next :func:`write_hdf5` to the same path
(:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .config import SystemConfig
from .scene import labels_from_scene, sample_scenes
from .sensing import sensing_echoes
from .waveform import transmit_signals

__all__ = ["CachedDataset", "SensingDataset", "open_hdf5", "remove_stale_temporaries", "simulate_batch", "write_hdf5"]

ARRAYS = ("y", "x", "labels")
FORMAT_VERSION = 2  # 2: meta_sha256 covers the attributes and the indices
META_ATTRS = ("config", "seed", "start", "n", "chunk", "format_version")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: str | Path, pattern: str) -> list[Path]:
    """Remove the temporaries a killed writer left in ``directory``: every entry whose name fully matches the
    regular expression ``pattern`` (with a group ``pid``, the writer's process id) and whose writer is no longer
    alive on this machine (files and directories). Entries of this process or of a live process are kept.

    The atomic writers of cfisac name their temporaries ``...tmp-PID``; each calls this for the temporaries of the
    target it is about to write, so a run killed with SIGKILL leaves nothing behind after the next run. (On a
    filesystem shared by several machines a PID says nothing about another machine's processes: do not write the
    same target from two machines at once.) Returns the removed paths.
    """
    rx = re.compile(pattern)
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = rx.fullmatch(entry.name)
        if m is None:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:  # removed meanwhile by another process, or not ours to remove
            pass
    return removed


def _meta_digest(attrs: Any, indices: np.ndarray) -> str:
    """SHA-256 of the attributes :data:`META_ATTRS` (canonical JSON) and of the ``indices`` array."""
    meta = {k: (attrs[k] if isinstance(attrs[k], str) else int(attrs[k])) for k in META_ATTRS}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return h.hexdigest()


def simulate_batch(
    cfg: SystemConfig, seed: int, indices: Sequence[int] | torch.Tensor, *, dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Simulate dataset samples ``indices``: ``y`` [B,M,Mr,Ns,Ts], ``x`` [B,N,Nt,Ns,Ts] (complex ``dtype``),
    ``labels`` psi = [g; v] [B,4Q] float32 in the canonical target order, ``positions`` / ``velocities`` f64."""
    idx = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices, dtype=torch.int64)
    if idx.dim() != 1 or len(idx) == 0:
        raise ValueError("indices must be a non-empty 1-D sequence of sample indices")
    if bool((idx < 0).any()):
        raise ValueError("sample indices must be non-negative")
    scenes = sample_scenes(cfg, len(idx), seed, indices=idx)
    x = transmit_signals(cfg, scenes, seed, dtype=dtype, device=device)
    y = sensing_echoes(cfg, scenes, x, noise=True, seed=seed)
    return {"y": y, "x": x, "labels": labels_from_scene(scenes).float(), "positions": scenes.positions,
            "velocities": scenes.velocities, "indices": idx}


class SensingDataset(torch.utils.data.Dataset):
    """On-the-fly dataset: item k is sample ``start + k`` of ``(cfg, seed)`` as a dict of tensors (no batch dim)."""

    def __init__(self, cfg: SystemConfig, seed: int, size: int, *, start: int = 0) -> None:
        if size <= 0 or start < 0:
            raise ValueError(f"size must be positive and start non-negative, got size={size}, start={start}")
        self.cfg, self.seed, self.size, self.start = cfg, seed, size, start

    def __len__(self) -> int:
        return self.size

    def _check(self, k: int) -> int:
        if not 0 <= k < self.size:
            raise IndexError(f"index {k} out of range for a dataset of {self.size} samples")
        return self.start + k

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return {n: v[0] for n, v in simulate_batch(self.cfg, self.seed, [self._check(k)]).items()}

    def __getitems__(self, ks: list[int]) -> list[dict[str, torch.Tensor]]:
        batch = simulate_batch(self.cfg, self.seed, [self._check(k) for k in ks])
        return [{n: v[j] for n, v in batch.items()} for j in range(len(ks))]


# ---------------------------------------------------------------------------------------------------- HDF5 cache
def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _parts_meta(cfg: SystemConfig, n: int, seed: int, chunk: int, start: int) -> dict[str, Any]:
    return {"config": cfg.to_json(), "seed": seed, "start": start, "n": n, "chunk": chunk,
            "format_version": FORMAT_VERSION}


def _claim_parts(parts: Path, meta: dict[str, Any], path: Path) -> int:
    """Prepare the directory of finished chunks ``parts`` for this writer: keep it when a killed writer of the same
    dataset left it (``meta.json`` equal to ``meta``), else start it afresh; refuse when a live process writes it.
    Returns the number of chunk files found."""
    owner = parts / "writer.pid"
    try:
        pid = int(owner.read_text().strip())
    except (OSError, ValueError):
        pid = -1
    if pid != os.getpid() and _pid_alive(pid):
        raise ValueError(f"cannot write the dataset to {path}: process {pid} is writing it now ({parts}); "
                         "wait for it or end it")
    try:
        same = json.loads((parts / "meta.json").read_text()) == meta
    except (OSError, ValueError):
        same = False
    if parts.exists() and not same:
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    tmp_owner = parts / f".writer.pid.tmp-{os.getpid()}"
    tmp_owner.write_text(str(os.getpid()))
    os.replace(tmp_owner, owner)
    if not same:
        tmp_meta = parts / f".meta.json.tmp-{os.getpid()}"
        tmp_meta.write_text(json.dumps(meta, sort_keys=True))
        os.replace(tmp_meta, parts / "meta.json")
    remove_stale_temporaries(parts, r"\..*\.tmp-(?P<pid>\d+)")
    return len(list(parts.glob("c*.npz")))


def _read_part(part: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a finished chunk file when it is intact (its SHA-256s match), else None (simulated again)."""
    try:
        with open(part, "rb") as fh, np.load(fh) as z:
            arrays = {k: z[k] for k in ARRAYS}
            digests = [d.decode() for d in z["sha256"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # torn or damaged: simulated again
        return None
    if [_digest(arrays[k]) for k in ARRAYS] != digests:
        return None
    return arrays


def write_hdf5(
    path: str | Path, cfg: SystemConfig, n: int, seed: int, *, chunk: int = 64, start: int = 0,
    progress: Callable[[int], Any] | None = None, log: Callable[[str], Any] | None = None,
) -> Path:
    """Simulate samples ``start .. start+n-1`` and write them to ``path`` atomically; resumable.

    Layout: datasets ``y``, ``x`` (complex64), ``labels`` (float32), ``indices`` (int64); attributes ``config``
    (JSON), ``seed``, ``start``, ``n``, ``chunk``, ``format_version``; dataset ``sha256`` [n_chunks, 3] with the
    digest of each chunk of rows of y, x and labels; attribute ``meta_sha256``, the digest of the other attributes
    and of ``indices``. ``progress(k)`` is called with the rows written so far. An existing directory at ``path`` or
    a folder that cannot be written is a ``ValueError`` before anything is simulated.

    Resuming: each simulated chunk is first stored (atomically, with its SHA-256s) in ``.NAME.h5.parts/``; the
    HDF5 file is assembled from them at the end, renamed into place, and the directory removed. A writer killed at
    any moment (SIGKILL, SIGTERM, a full disk) leaves the finished chunks there (an exception or Ctrl-C removes
    them), and the next call with the same arguments simulates only the
    missing ones (``log`` is told how many were found); the result has the same contents as an uninterrupted
    run, since sample d is a pure function of ``(cfg, seed, d)``. Other arguments start the directory afresh. Disk
    use peaks at about twice the file's size. A full disk or an unwritable folder is a one-line ``ValueError``; the
    previous file at ``path`` (if any) is untouched until the new one is complete.
    """
    if n <= 0 or chunk <= 0:
        raise ValueError(f"n and chunk must be positive, got n={n}, chunk={chunk}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0 or start < 0:
        raise ValueError(f"seed and start must be non-negative integers, got seed={seed!r}, start={start!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write the dataset to {path}: it is an existing directory")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    parts = path.with_name(f".{path.name}.parts")
    meta = _parts_meta(cfg, n, seed, chunk, start)

    def failed(err: OSError) -> ValueError:
        kept = f"; the finished chunks are kept in {parts}: free space and rerun to resume" if parts.is_dir() else ""
        return ValueError(f"cannot write the dataset to {path}: {getattr(err, 'strerror', None) or err}{kept}")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, re.escape(f".{path.name}.tmp-") + r"(?P<pid>\d+)")
        h5py.File(tmp, "w").close()  # fail now, not after simulating everything
        tmp.unlink()
        found = _claim_parts(parts, meta, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise failed(err) from None
    shapes = {
        "y": (cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols),
        "x": (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols),
        "labels": (4 * cfg.n_targets,),
    }
    dtypes = {"y": np.complex64, "x": np.complex64, "labels": np.float32}
    bounds = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    if log is not None and found:
        log(f"resuming {path}: {found} of {len(bounds)} chunk files were left by a killed run in {parts}")
    try:
        for c, (lo, hi) in enumerate(bounds):  # 1: every chunk into its part file (kept when a part is intact)
            part = parts / f"c{c:06d}.npz"
            if not (part.is_file() and _read_part(part) is not None):
                batch = simulate_batch(cfg, seed, range(start + lo, start + hi))
                arrays = {k: batch[k].numpy() for k in ARRAYS}
                part_tmp = parts / f".{part.name}.tmp-{os.getpid()}"
                with open(part_tmp, "wb") as fh:
                    np.savez(fh, **arrays, sha256=np.array([_digest(arrays[k]) for k in ARRAYS], dtype="S64"))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(part_tmp, part)
            if progress is not None:
                progress(hi)
        with h5py.File(tmp, "w") as f:  # 2: assemble the file from the (verified) parts
            ds = {k: f.create_dataset(k, (n, *shapes[k]), dtype=dtypes[k], chunks=(min(chunk, n), *shapes[k]))
                  for k in ARRAYS}
            indices = np.arange(start, start + n, dtype=np.int64)
            f.create_dataset("indices", data=indices)
            digests = []
            for c, (lo, hi) in enumerate(bounds):
                arrays = _read_part(parts / f"c{c:06d}.npz")
                if arrays is None:
                    raise ValueError(f"chunk file {parts / f'c{c:06d}.npz'} changed while {path} was written; rerun")
                for k in ARRAYS:
                    ds[k][lo:hi] = arrays[k]
                digests.append([_digest(arrays[k]) for k in ARRAYS])
            f.create_dataset("sha256", data=np.array(digests, dtype="S64"))
            f.attrs.update(meta, meta_sha256=_meta_digest(meta, indices))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full: the chunks stay for the rerun
        tmp.unlink(missing_ok=True)
        raise failed(err) from None
    except BaseException:  # an exception or Ctrl-C stops the write for good (SIGKILL / SIGTERM leave the chunks)
        tmp.unlink(missing_ok=True)
        shutil.rmtree(parts, ignore_errors=True)
        raise
    shutil.rmtree(parts, ignore_errors=True)
    return path


class CachedDataset(torch.utils.data.Dataset):
    """A verified HDF5 cache (see :func:`open_hdf5`); items are dicts like :class:`SensingDataset`'s."""

    def __init__(self, path: Path, cfg: SystemConfig, seed: int, n: int) -> None:
        self.path, self.cfg, self.seed, self.n = path, cfg, seed, n
        self._file: h5py.File | None = None  # opened lazily, once per DataLoader worker

    def __len__(self) -> int:
        return self.n

    def _f(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks: list[int]) -> list[dict[str, torch.Tensor]]:
        if any(not 0 <= k < self.n for k in ks):
            raise IndexError(f"indices {ks} out of range for a cache of {self.n} samples")
        f = self._f()
        order = np.argsort(ks)
        sorted_ks = np.asarray(ks)[order]
        arrays = {k: torch.from_numpy(f[k][sorted_ks]) for k in (*ARRAYS, "indices")}
        inverse = np.argsort(order)
        return [{k: v[int(j)] for k, v in arrays.items()} for j in inverse]


REMEDY = "delete it and re-create it with `cfisac simulate`"


def open_hdf5(path: str | Path, *, verify: bool = True) -> CachedDataset:
    """Open a cache written by :func:`write_hdf5`, checking its format and (with ``verify``) every checksum.

    Raises ``ValueError`` naming the problem for a missing, truncated, corrupted or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"dataset file {path} is not a readable HDF5 file (truncated or corrupted?): {err}; "
                         f"{REMEDY}") from err
    with f:
        missing = [k for k in (*ARRAYS, "indices", "sha256") if k not in f]
        if missing or "config" not in f.attrs:
            raise ValueError(f"dataset file {path} is not a cfisac cache (missing {missing or ['config']}); {REMEDY}")
        if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(f"dataset file {path} has format version {f.attrs.get('format_version')}, "
                             f"expected {FORMAT_VERSION} ({REMEDY})")
        absent = [k for k in (*META_ATTRS, "meta_sha256") if k not in f.attrs]
        if absent:
            raise ValueError(f"dataset file {path} lacks the attributes {absent} (not a cfisac cache?); {REMEDY}")
        try:
            meta_ok = _meta_digest(f.attrs, f["indices"][()]) == str(f.attrs["meta_sha256"])
        except (TypeError, ValueError, OSError) as err:
            raise ValueError(f"dataset file {path} has unreadable attributes or indices: {err}; {REMEDY}") from err
        if not meta_ok:
            raise ValueError(f"dataset file {path} is corrupted: checksum mismatch in its attributes "
                             f"({', '.join(META_ATTRS)}) or 'indices'; {REMEDY}")
        cfg = SystemConfig.from_dict(json.loads(f.attrs["config"]))
        n, chunk = int(f.attrs["n"]), int(f.attrs["chunk"])
        bad = [k for k in (*ARRAYS, "indices") if f[k].shape[:1] != (n,)]
        if bad or chunk <= 0:
            raise ValueError(f"dataset file {path} is inconsistent: {bad or 'chunk'} do not match n={n}; {REMEDY}")
        if verify:
            digests = f["sha256"][()]
            try:
                for c, lo in enumerate(range(0, n, chunk)):
                    hi = min(n, lo + chunk)
                    for j, k in enumerate(ARRAYS):
                        if _digest(f[k][lo:hi]) != digests[c, j].decode():
                            raise ValueError(f"dataset file {path} is corrupted: checksum mismatch in '{k}' "
                                             f"rows {lo}..{hi - 1}; {REMEDY}")
            except OSError as err:
                raise ValueError(f"dataset file {path} could not be read (truncated or corrupted?): {err}; "
                                 f"{REMEDY}") from err
        seed = int(f.attrs["seed"])
    return CachedDataset(path, cfg, seed, n)
