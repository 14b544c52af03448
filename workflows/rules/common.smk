# Config validation and every input function of the workflow (path logic only).
from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

GRID = config["grid"]


wildcard_constraints:
    grid=r"[A-Za-z0-9_-]+",


def final_outputs():
    """Everything `rule all` asks for in this grid."""
    return [f"results/{GRID}/bench/step.txt"]
