"""Synthetic datasets: a teacher answers seed prompts N times, a judge keeps the best.

    from opentracy.distillation.generation import GenerationConfig, Generator, read_seeds

    cfg = GenerationConfig.build(teacher="openai/gpt-4o", n_samples=4, judge="openai/gpt-4o-mini")
    seeds = read_seeds("prompt_seeds.txt", cfg.seeds)
    outcome = Generator(engine.gateway, engine.pricing, cfg, seeds).run_sync()

On a server, `engine.generation.submit(name, path, config)` (HTTP: POST /v1/datasets/{name}/generate; client:
`Distiller.generate_dataset`; CLI: `opentracy generate`) runs it as a job and writes a dataset version.
"""

from opentracy.distillation.generation.config import DedupeConfig, GenerationConfig, SeedOptions
from opentracy.distillation.generation.estimate import estimate
from opentracy.distillation.generation.run import GenerationOutcome, Generator, Sample, TeacherUnavailable
from opentracy.distillation.generation.seeds import Seed, SeedFile, Template, parse_seeds, read_seeds

__all__ = [
    "DedupeConfig",
    "GenerationConfig",
    "GenerationOutcome",
    "Generator",
    "Sample",
    "Seed",
    "SeedFile",
    "SeedOptions",
    "TeacherUnavailable",
    "Template",
    "estimate",
    "parse_seeds",
    "read_seeds",
]
