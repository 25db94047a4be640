"""Checks at the boundary, written once: every public entry of the library validates what it is
given with these helpers, and fails with one line that names the argument, what was expected and
what came — never an error from deep inside torch.

- sizes against memory before anything is allocated (:func:`check_fits`);
- argument checks (:func:`check_finite_number`, :func:`check_int`, ...), used by configs and
  public calls alike.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

# what may be allocated at most, as a share of the memory available now (the rest is headroom:
# activations, the optimizer, the data)
MEMORY_SHARE = 0.9


def human_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes that can be allocated now on ``device`` (default: host memory)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not refuse


def check_fits(nbytes: float, what: str, device: torch.device | str | None = None) -> None:
    """Refuse, before allocating, something that cannot fit in memory.

    Args:
        nbytes: the estimated size.
        what: what it is, for the message ("a model of 17.2 B parameters").

    Raises:
        ValueError: ``nbytes`` exceeds :data:`MEMORY_SHARE` of the memory available; the message
            names the estimate and what is available.
    """
    avail = available_memory(device)
    if not math.isfinite(nbytes) or nbytes > MEMORY_SHARE * avail:
        where = "GPU" if torch.device(device or "cpu").type == "cuda" else "host"
        raise ValueError(f"{what} needs about {human_bytes(nbytes)}, more than the {human_bytes(avail)} of "
                         f"{where} memory available: refused before allocating")


def check_finite_number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                        low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, if it is a finite real number in the range; else ``ValueError``
    naming ``key``, the range and the value."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        raise ValueError(f"{key} must be a finite number{' ' + rng if rng else ''}, got {value!r}")
    return float(value)


def check_int(key: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``; else ``ValueError``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = " and ".join(x for x in ((f">= {low}" if low is not None else ""),
                                       (f"<= {high}" if high is not None else "")) if x)
        raise ValueError(f"{key} must be an integer{' ' + rng if rng else ''}, got {value!r}")
    return value


def _bad_leaf(value: Any, depth: int = 0) -> Any:
    """The first element of nested lists that is not a real number (a bool, a string, ...)."""
    if isinstance(value, (list, tuple)):
        for v in value:
            bad = _bad_leaf(v, depth + 1)
            if bad is not _OK:
                return bad
        return _OK
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "dtype"):
        return value
    return _OK


_OK = object()


def numeric_array(value: Any, key: str, dtype=np.float32) -> np.ndarray:
    """A user's numbers (nested lists, a NumPy array, a torch tensor) as a ``dtype`` array.
    Strings, booleans and other objects are refused, not converted (``"1.5"`` and ``True`` are
    not measurements).

    Raises:
        TypeError: an element or an array dtype that is not a real number (named with ``key``).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{key} must hold real numbers, got a tensor of {value.dtype}")
        value = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{key} must be numbers (a list, an array or a tensor), got {type(value).__name__} {value!r:.40}")
    if isinstance(value, (list, tuple)):
        bad = _bad_leaf(value)
        if bad is not _OK:
            raise TypeError(f"{key} must hold numbers only, got {type(bad).__name__} {bad!r:.40}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(f"{key} must be a rectangular array of numbers (rows of one length)") from None
    if arr.dtype == object:
        raise TypeError(f"{key} must be a rectangular array of numbers (rows of one length), got ragged or mixed values")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{key} must hold real numbers, got an array of {arr.dtype}")
    return arr.astype(dtype, copy=False)
