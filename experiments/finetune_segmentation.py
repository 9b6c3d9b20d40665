"""Worked example: fine-tune a pretrained dense encoder for semantic segmentation.

The `vader-finetune-segmentation` command (`vader-finetune-segmentation --help`);
its code is in `vader_tf.scripts.finetune_segmentation`.
"""

from vader_tf.scripts.finetune_segmentation import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
