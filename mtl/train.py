"""``python -m mtl.train``: the same Hydra app as ``mtl-train``."""

from mtl.cli.train import main

if __name__ == "__main__":
    main()
