"""One process of the multi-worker test (run by test_multi_worker.py).

Usage: python multi_worker_main.py MODEL_DIR DATA_FOLDER WEIGHTS_OUT [oracle]

Pretrains a few steps and saves this process's final query parameters, their EMA copy,
the queue and the losses. With TF_CONFIG set it is one worker of a
MultiWorkerMirroredStrategy cluster (one replica each); with `oracle` it is the single
process the workers are compared with: MirroredStrategy over 2 logical CPUs, on the same
global batch.
"""

import sys

import numpy as np

from tests.training.helpers import small_config
from vader_tf.training.pretrain import pretrain

# With one image per replica, the workers' input pipelines (worker w reads elements w,
# w + 2, ... of the stream) and the single process's one pipeline (consecutive elements
# dealt to replicas in turn) put the same image on the same replica at every step; with
# more per replica they would group the images differently (and so the batch norms).
GLOBAL_BATCH = 2


def main(model_dir, data_folder, weights_out, mode="worker"):
    strategy = dict(strategy="mirrored", num_cpu_devices=2) if mode == "oracle" else dict(
        strategy="multi_worker"
    )
    config = small_config(
        model_dir, data_folder, batch_size=GLOBAL_BATCH, bn_groups=1, train_steps=2,
        deterministic=True, **strategy,
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
    main(*sys.argv[1:])
