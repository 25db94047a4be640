"""Data sources every recipe reads the same way.

``hf:NAME[:SPLIT]`` means one thing in every recipe: a folder written by
``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``'s, then ``SPLIT`` picks one, default
``train``), else a Hugging Face hub dataset already in the local cache. Nothing is downloaded in
offline mode; a miss is one line that says what to do.
"""

from __future__ import annotations

from pathlib import Path


def load_hf(spec: str, split: str = "train", streaming: bool = False):
    """A ``datasets.Dataset`` for ``hf:`` sources (``spec`` is what follows ``hf:``); with
    ``streaming``, an ``IterableDataset`` that reads as it goes.

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
        return ds.to_iterable_dataset() if streaming else ds
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as e:  # ConnectionError, DatasetNotFoundError, ... depending on the version
        raise ValueError(f"hf:{spec}: not a local folder and not available offline ({type(e).__name__}: "
                         f"{_first_line(e)}); download it once with network access, or give a folder "
                         "written by save_to_disk") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


class ExampleStream:
    """Training examples read in order from a source too large to hold in memory: JSONL shards
    (one JSON object per line) or a Hugging Face dataset in streaming mode. Give it to
    :class:`~fusion_core.trainer.Trainer` in place of a list.

    The trainer asks for example *positions* (step ``s`` takes positions ``s * batch_size`` to
    ``(s + 1) * batch_size - 1``; each process its share of them, each data-loading worker whole
    steps), so every example is used exactly once per epoch across all processes and workers, its
    random draws are keyed to its position, and a resumed run reads exactly what an uninterrupted
    one would. Each reader walks the stream in order and encodes only the records it uses; an
    epoch is one pass over the source, in the source's order (no shuffling).

    Args:
        records: returns a fresh iterable over the raw records, in the same order every time.
        encode: raw record → example (a list of Items); identity by default.
        name: for messages.
    """

    def __init__(self, records, encode=None, name: str = "stream"):
        self.records, self.encode, self.name = records, encode or (lambda r: r), name

    @classmethod
    def jsonl(cls, paths, encode=None) -> "ExampleStream":
        """JSONL shards, read in sorted path order; ``paths`` a path, a glob pattern or a list.

        Raises:
            ValueError: no file matches; later, a line that is not JSON (naming file and line).
        """
        import glob
        import json

        if isinstance(paths, (str, Path)):
            paths = sorted(glob.glob(str(paths))) or ([str(paths)] if Path(paths).is_file() else [])
        files = [Path(p) for p in paths]
        if not files:
            raise ValueError("no JSONL shards found: give a file, a list of files or a glob pattern like data/*.jsonl")
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"JSONL shards not found: {missing[:3]}")

        def records():
            for f in files:
                with open(f) as fh:
                    for n, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{f}:{n}: not valid JSON ({e})") from None
                        if isinstance(rec, dict):  # where it came from, for messages and relative paths
                            rec["_where"], rec["_folder"] = f"{f}:{n}", str(f.parent)
                        yield rec

        return cls(records, encode, name=f"{len(files)} JSONL shard(s)")

    @classmethod
    def hf(cls, dataset, encode=None) -> "ExampleStream":
        """A ``datasets`` dataset, streaming (``load_dataset(..., streaming=True)``) or not."""
        return cls(lambda: iter(dataset), encode, name=type(dataset).__name__)

    def cursor(self) -> "StreamCursor":
        return StreamCursor(self)

    def split(self, every: int) -> tuple["ExampleStream", "ExampleStream"]:
        """Two streams of the same source: every ``every``-th record (held out) and the rest."""
        if every < 2:
            raise ValueError(f"split needs every >= 2, got {every}")

        def rest():
            return (r for i, r in enumerate(self.records()) if i % every != every - 1)

        def held():
            return (r for i, r in enumerate(self.records()) if i % every == every - 1)

        return (ExampleStream(rest, self.encode, self.name), ExampleStream(held, self.encode, f"{self.name} (held out)"))


class StreamCursor:
    """Reads an :class:`ExampleStream` by position, forward (going back restarts the pass)."""

    def __init__(self, stream: ExampleStream):
        self.stream, self.epoch_len = stream, None
        self._it, self._pos, self._start = None, 0, 0  # the next record of _it is at position _pos

    def _restart(self, start: int) -> None:
        self._it, self._pos, self._start = iter(self.stream.records()), start, start

    def get(self, position: int):
        """The encoded example at ``position`` (epochs repeat the stream in the same order)."""
        if self._it is None or position < self._pos:
            self._restart(0 if self.epoch_len is None else position - position % self.epoch_len)
        while True:
            try:
                record = next(self._it)
            except StopIteration:
                if self._pos == self._start:
                    raise ValueError(f"{self.stream.name}: the stream is empty") from None
                self.epoch_len = self.epoch_len or self._pos
                self._restart(self._pos)  # the next epoch, in the same order
                continue
            if self._pos == position:
                self._pos += 1
                return self.stream.encode(record)
            self._pos += 1
