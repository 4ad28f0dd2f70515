"""GLIDE's Gaussian diffusion: schedules, the process, respacing, losses and a fast solver."""

from glide.diffusion.gaussian_diffusion import CondFn, DenoisedFn, GaussianDiffusion, Model
from glide.diffusion.inpaint import inpaint_denoised_fn
from glide.diffusion.respace import SpacedDiffusion, create_gaussian_diffusion, space_timesteps
from glide.diffusion.schedules import betas_for_alpha_bar, get_named_beta_schedule
from glide.diffusion.solvers import dpm_solver_pp_2m_sample, dpm_solver_timesteps

__all__ = [
    "CondFn",
    "DenoisedFn",
    "GaussianDiffusion",
    "Model",
    "SpacedDiffusion",
    "betas_for_alpha_bar",
    "create_gaussian_diffusion",
    "dpm_solver_pp_2m_sample",
    "dpm_solver_timesteps",
    "get_named_beta_schedule",
    "inpaint_denoised_fn",
    "space_timesteps",
]
