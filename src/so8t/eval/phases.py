"""No silent stretch: every phase a user waits on logs one line when it starts and one with its
elapsed time when it ends; a model pass also gets a tqdm bar (prompts done of the total) when
bars are on and stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Phases:
    """One line when a phase starts, one with its elapsed time when it ends; for a model pass
    (total given), a tqdm bar advanced by the pass's `between_batches` hook when bars are on."""

    def __init__(self, log: Callable[[str], None], progress: bool = True):
        self.log = log
        self.bars = progress and sys.stderr.isatty()

    @contextmanager
    def phase(self, what: str, total: int | None = None, batch_size: int = 16) -> Iterator[Callable[[], None] | None]:
        self.log(what)
        start = time.perf_counter()
        bar = None
        if total and self.bars:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=what.split(":")[0][:40], unit="prompt", leave=False, dynamic_ncols=True)
        calls = [0]

        def tick() -> None:  # called before each batch: the previous one is done
            if calls[0] and bar is not None:
                bar.update(min(batch_size, total - bar.n))
            calls[0] += 1

        try:
            yield tick if bar is not None else None
        finally:
            if bar is not None:
                bar.close()
        self.log(f"  done in {_elapsed(time.perf_counter() - start)}")


def _elapsed(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
