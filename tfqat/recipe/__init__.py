"""Recipe flags <-> library objects, the run directory's flags.txt, and a whole recipe's run.

The top of the library: may import every other package. Only the CLIs (`python -m
tfqat.train|export|evaluate`) and `tools/` import it; flags stop here.
"""
