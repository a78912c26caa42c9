"""The command-line layer: Hydra schemas and entry points, run directories, the sweep
collector and its figures. It imports the library; the library never imports it.

| command          | module                    |
| ---------------- | ------------------------- |
| nstyle-stylize   | :mod:`nstyle.cli.stylize` |
| nstyle-sweep     | :mod:`nstyle.cli.sweep`   |
| nstyle-collect   | :mod:`nstyle.cli.collect` |
| nstyle-train     | :mod:`nstyle.cli.train`   |
| nstyle-apply     | :mod:`nstyle.cli.apply`   |
| nstyle-weights   | :mod:`nstyle.cli.weights` |
"""
