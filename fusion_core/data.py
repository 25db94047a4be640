"""Data sources every recipe reads the same way.

``hf:NAME[:SPLIT]`` means one thing in every recipe: a folder written by
``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``'s, then ``SPLIT`` picks one, default
``train``), else a Hugging Face hub dataset already in the local cache. Nothing is downloaded in
offline mode; a miss is one line that says what to do.
"""

from __future__ import annotations

from pathlib import Path


def load_hf(spec: str, split: str = "train"):
    """A ``datasets.Dataset`` for ``hf:`` sources (``spec`` is what follows ``hf:``).

    Raises:
        ValueError: the ``data`` extra is not installed, the split does not exist, or the
            dataset is neither a local folder nor cached (offline).
    """
    try:
        import datasets
    except ImportError:
        raise ValueError("hf: sources need the `data` extra: pip install 'fusion-core[data]'") from None
    name, _, chosen = spec.partition(":")
    split = chosen or split
    if not name:
        raise ValueError("hf: needs a dataset name or folder, e.g. hf:./my_dataset or hf:user/name:train")
    if Path(name).exists():
        try:
            ds = datasets.load_from_disk(name)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"hf:{name}: not a folder written by save_to_disk ({_first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"hf:{name}: no split {split!r}; splits: {sorted(ds)}")
            ds = ds[split]
        return ds
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # ConnectionError, DatasetNotFoundError, ... depending on the version
        raise ValueError(f"hf:{spec}: not a local folder and not available offline ({type(e).__name__}: "
                         f"{_first_line(e)}); download it once with network access, or give a folder "
                         "written by save_to_disk") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
