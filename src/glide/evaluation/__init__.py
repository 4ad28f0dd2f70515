"""Evaluation: COCO-format sets, FID and a CLIP-feature Frechet distance, CLIP score, caption
accuracy with the ``shapes`` oracle, guidance sweeps and the sampler table."""

from glide.evaluation.captions import (
    CaptionAccuracy,
    caption_accuracy,
    is_builtin_caption,
    is_single_object,
)
from glide.evaluation.clip_score import CLIPScorer, NoisedCLIPScorer, OpenCLIPScorer, clip_score
from glide.evaluation.coco import CaptionedImage, CocoCaptions, load_coco_captions
from glide.evaluation.frechet import (
    INCEPTION_WEIGHTS_FILE,
    InceptionFID,
    MetricOutcome,
    compute_fid,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    resolve_inception_weights,
)
from glide.evaluation.report import guidance_rows, sampler_rows, write_csv, write_pareto_plot
from glide.evaluation.runner import (
    CLIPScoreConfig,
    EvaluateConfig,
    EvaluationResult,
    Evaluator,
    FIDConfig,
    PointResult,
    SamplerTableConfig,
    SweepConfig,
    summarize,
)

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "CLIPScoreConfig",
    "CLIPScorer",
    "CaptionAccuracy",
    "CaptionedImage",
    "CocoCaptions",
    "EvaluateConfig",
    "EvaluationResult",
    "Evaluator",
    "FIDConfig",
    "InceptionFID",
    "MetricOutcome",
    "NoisedCLIPScorer",
    "OpenCLIPScorer",
    "PointResult",
    "SamplerTableConfig",
    "SweepConfig",
    "caption_accuracy",
    "clip_score",
    "compute_fid",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
    "guidance_rows",
    "is_builtin_caption",
    "is_single_object",
    "load_coco_captions",
    "resolve_inception_weights",
    "sampler_rows",
    "summarize",
    "write_csv",
    "write_pareto_plot",
]
