"""Shared body of the rank-starting fakes in this directory (srun, aprun, jsrun, mpirun): a
launcher that really starts ``-n N`` ranks of one MPI job, as the site's would, and sets in each
rank's environment the variables that site launcher sets (:data:`VARIABLES`) -- and nothing
else of its own. Machines without those launchers run the ranks with the mpich wheel's Hydra
(``$BALSAM_FAKE_HYDRA``, ``-launcher fork``), one MPMD section per rank carrying its variables.

The application is the argv from the first absolute path on (the ensemble's Python); the
launcher's own flags before it are not checked here (``tests/fakes/bin`` checks the grammar).
Appends ``{"launcher", "argv", "env"}`` (its own environment) to ``$BALSAM_FAKE_LOG``. With
``$BALSAM_FAKE_SILENT`` set it sets no variable of its own (a launcher Balsam misjudges); with
``$BALSAM_FAKE_SINGLETONS`` set it starts each rank as a process of its own, outside any MPI
job (a site launcher whose process manager the ranks' MPI library does not speak: each rank's
``MPI_Init`` makes a world of one), and exits with the highest status of the ranks. With
``$BALSAM_FAKE_RANKS`` it starts that many ranks instead of ``-n``'s (a site launcher or
environment that changes the task count).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

VARIABLES = {
    "srun": lambda rank, size: {"SLURM_PROCID": rank, "SLURM_NTASKS": size, "SLURM_STEP_ID": "7"},
    "aprun": lambda rank, size: {"ALPS_APP_PE": rank},
    "jsrun": lambda rank, size: {"JSM_NAMESPACE_RANK": rank, "JSM_NAMESPACE_SIZE": size,
                                 "OMPI_COMM_WORLD_RANK": rank},
    "mpirun": lambda rank, size: {"OMPI_COMM_WORLD_RANK": rank, "OMPI_COMM_WORLD_SIZE": size,
                                  "PMIX_RANK": rank},
}
"""What each real launcher sets in every rank's environment before the rank starts (their
manuals: srun's OUTPUT ENVIRONMENT VARIABLES, ALPS, IBM JSM, Open MPI's mpirun)."""


def main() -> None:
    name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    start = next(i for i, arg in enumerate(args) if os.path.isabs(arg))
    size = int(os.environ.get("BALSAM_FAKE_RANKS") or args[args.index("-n") + 1])
    with open(os.environ["BALSAM_FAKE_LOG"], "a") as log:
        log.write(json.dumps({"launcher": name, "argv": args, "env": dict(os.environ)}) + "\n")
    if os.environ.get("BALSAM_FAKE_SINGLETONS"):
        # (without PMI_/PMIX_ variables: a stale one makes MPICH's MPI_Init look for its server)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_"))}
        ranks = [subprocess.Popen(args[start:], env={**base, **VARIABLES[name](str(rank),
                                                                             str(size))})
                 for rank in range(size)]
        sys.exit(max(rank.wait() for rank in ranks))
    hydra = os.environ["BALSAM_FAKE_HYDRA"]
    argv = [hydra, "-launcher", "fork", "-hosts", f"localhost:{size}", "-bind-to", "none"]
    for rank in range(size):
        own = {} if os.environ.get("BALSAM_FAKE_SILENT") else VARIABLES[name](str(rank), str(size))
        argv += [":"] if rank else []
        argv += ["-n", "1"] + [item for k, v in own.items() for item in ("-env", k, v)]
        argv += args[start:]
    os.execv(hydra, argv)
