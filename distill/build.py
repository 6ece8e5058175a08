"""Build a latent generator from a user's spec: ``toy``, a converted StyleGAN2 or a diffusion model directory."""
from __future__ import annotations

from pathlib import Path

from distill.latent_generator import LatentGenerator, LatentGeneratorError


def generator_kind_of(spec: str, kind: str = "auto") -> str:
    if kind != "auto":
        if kind not in ("toy", "stylegan2", "diffusion"):
            raise LatentGeneratorError(f"distill.generator_kind: unknown {kind!r} (auto | toy | stylegan2 | diffusion)")
        return kind
    if spec == "toy":
        return "toy"
    p = Path(spec)
    if p.suffix == ".safetensors" or (p / "G_ema.safetensors").is_file():
        return "stylegan2"
    if (p / "config.json").is_file():
        return "diffusion"
    if p.suffix == ".pkl":
        raise LatentGeneratorError(f"distill.generator {spec}: NVlabs pickles run code when loaded; convert it first "
                                   "(python -m distill.stylegan2_convert <pkl> <out_dir>, which runs none of it)")
    raise LatentGeneratorError(f"distill.generator {spec}: not 'toy', a StyleGAN2 G_ema.safetensors or a diffusion "
                               "model directory with config.json")


def build_latent_generator(spec: str, kind: str = "auto", device: str = "cpu", toy_w_scale: float = 2.0,
                           toy_render_size: int = 112, psi: float = 1.0, noise_mode: str = "random",
                           diffusion_steps: int = 25, diffusion_guidance: float = 2.0) -> LatentGenerator:
    kind = generator_kind_of(spec, kind)
    if kind == "toy":
        from distill.toy_generator import ToyLatentGenerator

        return ToyLatentGenerator(w_scale=toy_w_scale, render_size=toy_render_size)
    if kind == "stylegan2":
        from distill.stylegan2 import StyleGAN2Generator, load_stylegan2

        return StyleGAN2Generator(load_stylegan2(spec, device), device, psi=psi, noise_mode=noise_mode)
    from distill.diffusion_latents import load_diffusion_latents

    return load_diffusion_latents(spec, device, steps=diffusion_steps, guidance=diffusion_guidance)
