"""One worker of the two-process multi-worker test (run by test_multi_worker.py).

Usage: python multi_worker_main.py MODEL_DIR DATA_FOLDER WEIGHTS_OUT, with TF_CONFIG set.
Pretrains a few steps under MultiWorkerMirroredStrategy and saves this worker's final
query parameters, their EMA copy and the queue, so the test can check that both workers agree.
"""

import sys

import numpy as np

from tests.training.helpers import small_config
from vader_tf.training.pretrain import pretrain


def main(model_dir, data_folder, weights_out):
    config = small_config(
        model_dir, data_folder, strategy="multi_worker", bn_groups=2, train_steps=3
    )
    model, history = pretrain(config)
    # Parameters and their EMA; BN moving statistics are worker-local running averages.
    arrays = {f"query_{i}": w.numpy() for i, w in enumerate(model.query_model.trainable_weights)}
    arrays.update({f"key_{i}": model.key_model.weights[i].numpy() for i in model._ema_indices})
    arrays["queue"] = model.queue.numpy()
    arrays["loss"] = np.array([h["loss"] for h in history])
    arrays["replicas"] = np.array(model.distribute_strategy.num_replicas_in_sync)
    np.savez(weights_out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:4])
