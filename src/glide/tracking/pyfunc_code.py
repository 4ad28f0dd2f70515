"""The code of a glide logged model (MLflow "models from code"): MLflow copies this file into
the model's folder and runs it to build the model, instead of unpickling one. See
:mod:`glide.tracking.mlflow_model`."""

import mlflow

from glide.tracking.mlflow_model import GlideExportModel

mlflow.models.set_model(GlideExportModel())
