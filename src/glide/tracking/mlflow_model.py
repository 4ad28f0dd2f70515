"""The MLflow logged model of a glide export: what the Model Registry's versions point at.

A training run (and, for a run without one, the ``register`` stage) logs its export
``model.pt`` (options, tokenizer, diffusion settings and weights; :mod:`glide.models.export`,
read with ``torch.load(weights_only=True)``) as the logged model ``model``: an MLflow
``python_function`` model *from code*. Its folder holds the export file and a copy of the few
lines of :mod:`glide.tracking.pyfunc_code`, which MLflow runs to build the model; nothing is
pickled - no ``mlflow.pytorch`` pickle of the network (and no warning about one), no
cloudpickled Python object - so loading it unpickles nothing.

With glide installed, ``mlflow.pyfunc.load_model("models:/glide-base@champion")`` rebuilds the
network with glide's own loader (``.unwrap_python_model().loaded`` is the
:class:`~glide.sampling.LoadedModel`), and ``predict(["a red circle"])`` samples a base model's
images at its own resolution. ``glide sample --base models:/...`` reads the same export from the
training run (``export/model.pt``).

The logged model carries the training run's params and, once registered, the evaluation metrics
(:meth:`glide.tracking.registry.ModelRegistry.register`): the MLflow UI lists them on the model's
page, which a version's page links as its "Source Model".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

__all__ = [
    "EXPORT_ARTIFACT",
    "MODEL_NAME",
    "MODEL_TYPE",
    "TAG_MODEL_SHA",
    "GlideExportModel",
    "log_export_model",
]

MODEL_NAME = "model"  # runs:/<run>/model, as mlflow.pytorch logged it before
MODEL_TYPE = "glide-export"
EXPORT_ARTIFACT = "export"  # the key of model.pt in the pyfunc's artifacts
TAG_MODEL_SHA = "glide.sha256"  # on the logged model: the digest of the export it holds
CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
REQUIREMENTS = ["torch", "glide-pipeline"]  # glide's loader; skips slow requirement inference


class GlideExportModel(PythonModel):
    """A glide export as an MLflow ``python_function`` model."""

    loaded: Any = None

    def load_context(self, context: Any) -> None:
        from glide.sampling import load_model_source

        self.loaded = load_model_source(context.artifacts[EXPORT_ARTIFACT])

    def predict(self, context: Any, model_input: list[str], params: Any = None):
        """Prompts -> one uint8 image ``[H, W, 3]`` (numpy) per prompt, from a text-to-image base
        model alone (no upsampler), with ``glide sample``'s default recipe (a distilled student:
        the ``distilled`` one) and seed 0. Other kinds: sample the cascade with ``glide sample``.

        No return annotation: MLflow infers the model's signature from these hints and would warn
        that an ``Any`` output is not validated."""
        from glide.sampling import Cascade, GenerationConfig, for_models, get_recipe
        from glide.sampling.model_source import is_text2im
        from glide.sampling.recipes import DEFAULT_RECIPE

        loaded = self.loaded
        if loaded is None or not is_text2im(loaded) or loaded.super_res or loaded.inpaint:
            kind = getattr(loaded, "kind", "unknown")
            raise ValueError(
                f"predict samples text-to-image base models; this is a {kind} model: sample the "
                "cascade with `glide sample --base ... --upsampler models:/...`"
            )
        name = "distilled" if loaded.options.get("guidance_embed") else DEFAULT_RECIPE
        recipe = for_models(get_recipe(name), loaded)
        config = GenerationConfig(
            sampler=recipe.sampler, upsample=False, execution=recipe.execution, seed=0
        )
        images = Cascade(loaded).generate([str(p) for p in model_input], config).final
        return list(images.permute(0, 2, 3, 1).numpy())


@contextmanager
def _no_progress_bars() -> Any:
    """MLflow's artifact progress bars off (copying one local file into the model folder)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def log_export_model(
    client: Any,
    *,
    run_id: str,
    model_file: str | Path,
    sha256: str | None = None,
    params: Mapping[str, str] | None = None,
) -> str:
    """Log ``model_file`` (a glide export) as the logged model ``model`` of run ``run_id``
    (a ``python_function`` model from code; see the module docstring) with ``client``, an
    ``MlflowClient`` (any store: SQLite, a server); returns its model id.

    The model carries ``params`` (default: the run's params, as ``mlflow.*.log_model`` copies
    them) and the tag :data:`TAG_MODEL_SHA`, by which the registry finds the model that holds
    the export it registers. It is listed as an output of the run, and ``READY`` once uploaded.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    from glide.tracking.registry import file_sha256

    model_file = Path(model_file)
    run = client.get_run(run_id)
    model = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params=dict(run.data.params if params is None else params),
        tags={TAG_MODEL_SHA: sha256 or file_sha256(model_file)},
        model_type=MODEL_TYPE,
    )
    meta = Model(
        artifact_path=model.artifact_location,
        model_uuid=model.model_id,
        run_id=run_id,
        model_id=model.model_id,
    )
    with tempfile.TemporaryDirectory(prefix="glide-model-") as tmp, _no_progress_bars():
        local = Path(tmp) / MODEL_NAME
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=str(CODE_FILE),
            artifacts={EXPORT_ARTIFACT: str(model_file)},
            pip_requirements=REQUIREMENTS,
            mlflow_model=meta,
        )
        client.log_model_artifacts(model.model_id, str(local))
    client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=0)])
    client.finalize_logged_model(model.model_id, "READY")
    return str(model.model_id)
