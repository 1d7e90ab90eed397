"""``python -m kd_lightning.cli``: the ``kd-lightning`` command."""

from kd_lightning.cli.command import main

if __name__ == "__main__":
    main()
