# pear-bench: the PEAR grid as a Snakemake workflow.
#   snakemake --cores all                                          # the CPU miniature (workflows/config/mini.yaml)
#   snakemake --cores all --configfile workflows/config/<grid>.yaml
# This file is a table of contents: rules live in workflows/rules/, input functions in common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "workflows/config/mini.yaml"


include: "workflows/rules/common.smk"
include: "workflows/rules/bench.smk"


rule all:
    input:
        final_outputs(),
