"""GLIDE's Gaussian diffusion: schedules, the process, respacing, losses and a fast solver."""

from glide.diffusion.gaussian_diffusion import (
    PARAMETRIZATIONS,
    CondFn,
    DenoisedFn,
    GaussianDiffusion,
    Model,
)
from glide.diffusion.inpaint import inpaint_denoised_fn
from glide.diffusion.losses import LOSS_WEIGHTINGS, min_snr_weight
from glide.diffusion.noise import ImageGenerators, NoiseGenerator, draw_noise, image_seed
from glide.diffusion.objective import TrainingObjective
from glide.diffusion.respace import (
    SpacedDiffusion,
    create_gaussian_diffusion,
    distillation_grid,
    space_timesteps,
)
from glide.diffusion.schedules import betas_for_alpha_bar, get_named_beta_schedule
from glide.diffusion.solvers import dpm_solver_pp_2m_sample, dpm_solver_timesteps
from glide.diffusion.timesteps import (
    TIMESTEP_SAMPLERS,
    LossSecondMomentSampler,
    TimestepSampler,
    UniformSampler,
    build_timestep_sampler,
)

__all__ = [
    "LOSS_WEIGHTINGS",
    "PARAMETRIZATIONS",
    "TIMESTEP_SAMPLERS",
    "CondFn",
    "DenoisedFn",
    "GaussianDiffusion",
    "ImageGenerators",
    "LossSecondMomentSampler",
    "Model",
    "NoiseGenerator",
    "SpacedDiffusion",
    "TimestepSampler",
    "TrainingObjective",
    "UniformSampler",
    "betas_for_alpha_bar",
    "build_timestep_sampler",
    "create_gaussian_diffusion",
    "distillation_grid",
    "dpm_solver_pp_2m_sample",
    "dpm_solver_timesteps",
    "draw_noise",
    "get_named_beta_schedule",
    "image_seed",
    "inpaint_denoised_fn",
    "min_snr_weight",
    "space_timesteps",
]
