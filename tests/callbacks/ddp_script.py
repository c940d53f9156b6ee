"""Two CPU processes (``strategy="ddp"``, gloo), launched once by ``test_ddp.py``: ``python ddp_script.py OUT``.

Lightning's DDP launcher re-runs this script in the second process, so it cannot run under pytest itself. It does:

1. EmbeddingWriter on 1,001 samples with Lightning's own (interleaving, non-padding) sampler: npy with integer
   ids, string labels and the projector files (into ``OUT``, the log folder), and tsv with string ids, into
   ``OUT/ddp_npy`` and ``OUT/ddp_tsv``.
2. EmbeddingWriter behind a user's ``DistributedSampler``, which pads 1,001 samples to 1,002 by repeating one,
   into ``OUT/ddp_padded``.
3. Every callback ``plkit.callbacks`` exports, built from its recipe entry, through fit, validate, test and
   predict, while an audit hook records every file each rank opens for writing, renames, creates or deletes
   under ``OUT/contract``; each rank saves its list as ``OUT/touched_rank{r}.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from plkit.callbacks import EmbeddingWriter

from callback_helpers import PointDataset, TinyModel, build_from_recipes, exported_callbacks, quiet, recipe_for

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_watch: dict[str, Any] = {"root": None, "touched": []}


def audit(event: str, args: tuple[Any, ...]) -> None:
    root = _watch["root"]
    if root is None:
        return
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and bool(flags & WRITE_FLAGS)
        )
        paths = [path] if writes else []
    elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
        paths = list(args[:2]) if event == "os.rename" else [args[0]]
    else:
        return
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)):
            text = os.path.abspath(os.fsdecode(path))
            if text.startswith(root):
                _watch["touched"].append(f"{event} {text}")


def trainer(root: Path, callbacks: list[Any], **kw: Any) -> pl.Trainer:
    args = quiet(root, accelerator="cpu", devices=2, strategy="ddp", **kw)
    return pl.Trainer(callbacks=callbacks, **args)


def main(out: Path) -> None:
    sys.addaudithook(audit)
    data = PointDataset(1001, seed=3)
    loader = DataLoader(data, batch_size=50)
    writer = EmbeddingWriter(out / "ddp_npy", id_key="sku", label_key="name", projector=True)
    trainer(out, [writer]).predict(TinyModel(), loader, return_predictions=False)
    writer = EmbeddingWriter(out / "ddp_tsv", id_key="name", format="tsv")
    trainer(out, [writer]).predict(TinyModel(), loader, return_predictions=False)

    t = trainer(out, [EmbeddingWriter(out / "ddp_padded", id_key="sku")], use_distributed_sampler=False)
    sampler = DistributedSampler(data, num_replicas=2, rank=int(os.environ.get("LOCAL_RANK", 0)), shuffle=False)
    t.predict(TinyModel(), DataLoader(data, batch_size=50, sampler=sampler), return_predictions=False)

    contract = out / "contract"
    callbacks = build_from_recipes([recipe_for(cls, contract) for cls in exported_callbacks()])
    _watch["root"] = str(contract.absolute())
    model = TinyModel(n=32)
    t = trainer(out / "contract_run", callbacks, max_epochs=2, limit_val_batches=2, limit_test_batches=2)
    t.fit(model)
    t.validate(model, verbose=False)
    t.test(model, verbose=False)
    t.predict(model, return_predictions=False)
    _watch["root"] = None
    (out / f"touched_rank{t.global_rank}.json").write_text(json.dumps(sorted(set(_watch["touched"])), indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]).absolute())
