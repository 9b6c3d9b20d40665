"""The commands (`vader-pretrain`, `vader-export`, ...; see `vader_tf.cli.COMMANDS`).

Each module is a thin absl program: flags, a `main(argv)` mapping them onto the library,
and `run()`, the console entry point that `pip install` makes a command of. The scripts
in `experiments/` and `export/` run the same modules (`python experiments/pretrain.py`).
"""
