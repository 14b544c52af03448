# pear-bench: the PEAR grid as a Snakemake workflow.
#   snakemake --cores all                                               # the CPU miniature (workflows/config/mini.yaml)
#   snakemake --cores all --configfile workflows/config/paper.yaml      # the paper's grid on a GPU node
#   snakemake --workflow-profile workflows/profiles/slurm --configfile workflows/config/paper.yaml
#   snakemake --cores all --config reference_tolerance=0.02            # other hardware: how far a metric may move
#   snakemake --report results/mini/report.html                         # after a run: tables and plots in one page
# This file is a table of contents: rules live in workflows/rules/, input functions in common.smk.
from snakemake.utils import min_version

min_version("9.0")


# The default grid, only when no --configfile is given (Snakemake would otherwise merge the two).
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/workflows/config/mini.yaml"


report: "workflows/report/workflow.rst"


include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/models.smk"
include: "workflows/rules/collect.smk"
include: "workflows/rules/sft.smk"
include: "workflows/rules/rl.smk"
include: "workflows/rules/eval.smk"
include: "workflows/rules/tables.smk"
include: "workflows/rules/reproduce.smk"
include: "workflows/rules/bench.smk"


rule all:
    input:
        final_outputs(),
