"""The pipeline's data as MLflow datasets, identified by the hash DVC records in ``dvc.lock``.

``prepare`` logs what it wrote, the train and val shards and the COCO-format val export, as
MLflow datasets: the name is the path in the repository (``data/shards/train``), the digest the
md5 DVC writes for that path (``<md5>.dir`` for a folder, computed with DVC's own hashing code,
so the two agree), the source the local folder, and the profile its record counts plus the
``prepare`` stage's per-reason drop counts. Every training run logs the shards it read (contexts
``training``, ``validation``) and ``evaluate`` its caption set (``evaluation``), so the MLflow UI
shows the same dataset, by digest, on each run. Each consumer is tagged with the ``prepare`` run
that produced its data (``lineage.prepare_run_id``, found by digest) and gets a description
linking to it.

MLflow keeps one dataset per (experiment, name, digest): the first run to log it (normally
``prepare``) sets the profile every later run shows.
"""

from __future__ import annotations

import json
import re
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CONTEXT_TAG",
    "DESCRIPTION_TAG",
    "PREPARE_RUN_TAG",
    "DataRef",
    "coco_dataset",
    "dvc_md5",
    "find_prepare_run",
    "link_inputs",
    "load_prepare_stats",
    "log_datasets",
    "run_datasets",
    "run_link",
    "shard_dataset",
    "shard_inputs",
]

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag for the role of a dataset in a run
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description (Markdown in the UI)
PREPARE_RUN_TAG = "lineage.prepare_run_id"
_SAMPLE_KEY = re.compile(
    r"^((?:.*/|)[^./]+)\."
)  # WebDataset: the key is the name up to the first dot


def dvc_md5(path: str | Path) -> str:
    """The md5 ``dvc.lock`` records for ``path``: a file's md5, or ``<md5>.dir`` for a folder
    (the md5 of DVC's JSON listing of its files), computed by ``dvc_data`` itself.

    A repository's ``.dvcignore`` is not applied: this project's only ignores, ``__pycache__``
    and ``*.pyc``, never occur in data folders.
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        # dry_run: hash only; the object store is required by the API but receives nothing.
        odb = HashFileDB(fs, tmp, hash_name="md5")
        _, _, obj = build(odb, str(Path(path).resolve()), fs, "md5", dry_run=True)
    return str(obj.hash_info.value)


@dataclass(frozen=True, kw_only=True)
class DataRef:
    """One dataset of the pipeline: where it is and what MLflow shows for it."""

    name: str  # the path as dvc.yaml and dvc.lock name it (absolute outside the repository)
    path: Path
    digest: str  # dvc_md5(path)
    profile: Mapping[str, Any] = field(default_factory=dict)

    def entity(self) -> Any:
        """The ``mlflow.entities.Dataset`` (local source, JSON profile)."""
        from mlflow.entities import Dataset

        return Dataset(
            name=self.name,
            digest=self.digest,
            source_type="local",
            source=json.dumps({"uri": str(self.path.resolve())}),
            profile=json.dumps(dict(self.profile), sort_keys=True),
        )


def _name(root: Path, path: Path) -> str:
    absolute = path.resolve()
    try:
        return absolute.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return absolute.as_posix()


def load_prepare_stats(path: str | Path) -> dict[str, Any] | None:
    """``metrics/prepare.json`` (the prepare stage's counts), or None when absent or unreadable."""
    try:
        stats = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) else None


def _prepare_profile(stats: Mapping[str, Any] | None, split: str, records: int) -> dict[str, Any]:
    """The prepare stage's counts, when ``stats`` describe this data (same split size)."""
    if not stats or (stats.get("splits") or {}).get(split) != records:
        return {}
    return {
        "prepare": {
            "total": stats.get("total"),
            "kept": stats.get("kept"),
            "dropped": dict(stats.get("dropped") or {}),
        }
    }


def shard_dataset(
    root: str | Path,
    shards_dir: str | Path,
    split: str,
    *,
    stats: Mapping[str, Any] | None = None,
) -> DataRef:
    """``<shards_dir>/<split>`` (WebDataset tars; relative paths from the working directory, as
    the stages use them) with its sample and shard counts; ``stats`` (the prepare stage's
    metrics) add the drop counts. Unreadable tars are counted, not fatal."""
    path = Path(shards_dir) / split
    keys: set[str] = set()
    tars = sorted(path.glob("*.tar"))
    unreadable = 0
    for tar in tars:
        try:
            with tarfile.open(tar) as archive:
                for member in archive.getnames():
                    if match := _SAMPLE_KEY.match(member):
                        keys.add(f"{tar.name}/{match.group(1)}")
        except (OSError, tarfile.TarError):
            unreadable += 1
    profile: dict[str, Any] = {"records": len(keys), "shards": len(tars)}
    if unreadable:
        profile["unreadable_shards"] = unreadable
    profile.update(_prepare_profile(stats, split, len(keys)))
    return DataRef(name=_name(Path(root), path), path=path, digest=dvc_md5(path), profile=profile)


def shard_inputs(
    root: str | Path,
    shards_dir: str | Path,
    *,
    validation: bool,
    stats: Mapping[str, Any] | None = None,
) -> list[tuple[DataRef, str]]:
    """What a training run reads: the train shards (``training``) and, when it validates, the val
    shards (``validation``). Missing folders are left out (training reports them itself)."""
    wanted = [("train", "training")] + ([("val", "validation")] if validation else [])
    return [
        (shard_dataset(root, shards_dir, split, stats=stats), context)
        for split, context in wanted
        if (Path(shards_dir) / split).is_dir()
    ]


def coco_dataset(
    root: str | Path,
    captions: str | Path,
    *,
    export_dir: str | Path | None = None,
    stats: Mapping[str, Any] | None = None,
) -> DataRef:
    """The caption set an evaluation reads. Inside ``export_dir`` (the prepare stage's COCO-format
    val export) the dataset is that whole folder, as DVC tracks it; elsewhere (real MS-COCO) it is
    the captions file. The profile counts images and captions."""
    captions = Path(captions)
    profile: dict[str, Any] = {}
    try:
        doc = json.loads(captions.read_text())
        profile = {"images": len(doc.get("images") or ()), "captions": len(doc["annotations"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        profile = {"unreadable": True}
    target = captions
    if export_dir is not None and captions.parent.resolve() == Path(export_dir).resolve():
        target = captions.parent
        profile.update(_prepare_profile(stats, "val", int(profile.get("images", -1))))
    name = _name(Path(root), target)
    return DataRef(name=name, path=target, digest=dvc_md5(target), profile=profile)


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    """A Markdown link to a run's page in the MLflow UI (relative: works on any host)."""
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id})"


def find_prepare_run(client: Any, experiment_id: str, digest: str) -> Any | None:
    """The latest finished ``prepare`` run of the experiment that logged a dataset ``digest``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.stage = 'prepare' and dataset.digest = '{digest}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def log_datasets(client: Any, run_id: str, inputs: Sequence[tuple[DataRef, str]]) -> None:
    """Log ``inputs`` ((dataset, context) pairs) as dataset inputs of ``run_id``."""
    from mlflow.entities import DatasetInput, InputTag

    client.log_inputs(
        run_id,
        datasets=[DatasetInput(ref.entity(), [InputTag(CONTEXT_TAG, ctx)]) for ref, ctx in inputs],
    )


def link_inputs(
    client: Any, run_id: str, inputs: Sequence[tuple[DataRef, str]], *, describe: bool = True
) -> str | None:
    """Log ``inputs`` ((dataset, context) pairs) on ``run_id``, tag the run with the ``prepare`` run
    that produced them and, with ``describe``, set a description linking to it (unless the run
    already has one). Returns that prepare run's id, if one is found."""
    log_datasets(client, run_id, inputs)
    run = client.get_run(run_id)
    experiment_id = run.info.experiment_id
    producer = None
    for ref, _ in inputs:
        producer = find_prepare_run(client, experiment_id, ref.digest)
        if producer is not None:
            break
    if producer is not None and producer.info.run_id != run_id:
        client.set_tag(run_id, PREPARE_RUN_TAG, producer.info.run_id)
    if describe and not run.data.tags.get(DESCRIPTION_TAG):
        lines = [f"- `{ref.name}` ({ctx}), DVC md5 `{ref.digest}`" for ref, ctx in inputs]
        if producer is not None and producer.info.run_id != run_id:
            link = run_link(experiment_id, producer.info.run_id, producer.info.run_name or "run")
            lines.append(f"\nMade by the prepare run {link}.")
        client.set_tag(run_id, DESCRIPTION_TAG, "**Data**\n\n" + "\n".join(lines))
    return None if producer is None else producer.info.run_id


def run_datasets(run: Any) -> dict[str, str]:
    """``{context: "name@digest"}`` of the datasets logged on an MLflow run (several datasets in
    one context are joined with ``, ``)."""
    out: dict[str, list[str]] = {}
    inputs = getattr(run, "inputs", None)
    for item in getattr(inputs, "dataset_inputs", None) or ():
        context = next((t.value for t in item.tags if t.key == CONTEXT_TAG), "") or "-"
        out.setdefault(context, []).append(f"{item.dataset.name}@{item.dataset.digest}")
    return {k: ", ".join(sorted(v)) for k, v in sorted(out.items())}
