"""What VADeR and its MoCo baseline share: a query network trained by InfoNCE against
keys from its momentum copy and a queue of earlier keys.

Subclasses say what a contrastive row is (a matched pixel for VADeR, an image for MoCo)
by implementing `contrastive_rows`; everything else lives here once: key and query forward
passes with the batch-norm guard, the loss scaled for the replica count, the optimiser
step, the momentum update and the all-gathered enqueue.

Batch-norm leakage guard ("shuffle BN", done inside each replica): BN computes its
statistics over the images that go through the network together. If the query and its
positive key are normalised with statistics of the same group of images, the network can
tell the current batch's keys from the queue's by those statistics and lower the loss
without learning features (MoCo, Sec. 3.3). Each replica therefore splits its batch into
`bn_groups` groups; queries are normalised per contiguous group, keys per group of a random
permutation of the batch, so a key rarely shares its BN group with its query. This needs no
cross-replica traffic and works the same on one device, several GPUs or several machines
(SyncBN would defeat it). With `bn_groups=1` (or `shuffle_bn=False`) the guard is off.
"""

import keras
import tensorflow as tf

from vader_tf import losses
from vader_tf.training import momentum as momentum_lib
from vader_tf.training import queue as queue_lib


def grouped_forward(model, images, num_groups, permutation=None, training=True):
    """Runs `model` on `num_groups` slices of the batch so BN sees each slice alone.

    With a `permutation`, slices are cut from the permuted batch and the outputs are put
    back in the original order.
    """
    if permutation is not None:
        images = tf.gather(images, permutation)
    if num_groups == 1:
        outputs = model(images, training=training)
    else:
        outputs = tf.concat(
            [model(chunk, training=training) for chunk in tf.split(images, num_groups)], axis=0
        )
    if permutation is not None:
        outputs = tf.gather(outputs, tf.math.invert_permutation(permutation))
    return outputs


class MomentumContrast(keras.Model):
    """Base class: query network, momentum key network, key queue, custom `train_step`.

    Args:
        query_model: the network trained by gradient descent.
        key_model: a network of identical architecture; becomes the momentum copy (its
            weights are overwritten with the query's and never receive gradients).
        embedding_dim: channels of the keys held in the queue.
        queue_size: K, number of negative keys kept.
        temperature: InfoNCE temperature.
        momentum: EMA momentum of the key network.
        momentum_schedule: "constant" or "cosine" (momentum -> 1 over `total_steps`).
        total_steps: length of training, for the cosine schedule.
        bn_groups: BN groups per replica (see module docstring); the per-replica batch
            must be divisible by it.
        shuffle_bn: permute the batch for the key network's BN groups.
        seed: seed of the queue initialisation and of the BN shuffles.
    """

    def __init__(
        self,
        query_model,
        key_model,
        embedding_dim,
        queue_size=65536,
        temperature=0.2,
        momentum=0.999,
        momentum_schedule="constant",
        total_steps=None,
        bn_groups=2,
        shuffle_bn=True,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(key_model.weights) != len(query_model.weights):
            raise ValueError("key_model must have the same architecture as query_model.")
        self.query_model = query_model
        self.key_model = key_model
        self.embedding_dim = embedding_dim
        self.queue_size = queue_size
        self.temperature = temperature
        self.momentum = momentum
        self.momentum_schedule = momentum_schedule
        self.total_steps = total_steps
        self.bn_groups = bn_groups
        self.shuffle_bn = shuffle_bn
        self.seed = seed
        # Indices of the weights the momentum update carries over: the query's trainable
        # parameters (as in MoCo). BN moving statistics of the key network follow its own
        # batches, since it runs with BN in training mode.
        self._ema_indices = [i for i, w in enumerate(query_model.weights) if w.trainable]
        for key_weight, query_weight in zip(key_model.weights, query_model.weights):
            key_weight.assign(query_weight)
            # The key network stays `trainable` (so BN uses batch statistics) but none of
            # its variables is: it is never seen by the optimiser or the gradient tape.
            key_weight.trainable = False

        self.queue = self.add_weight(
            shape=(queue_size, embedding_dim),
            initializer=lambda shape, dtype: queue_lib.random_unit_rows(shape, dtype, seed),
            trainable=False,
            name="queue",
        )
        self.queue_pointer = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="queue_pointer"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.positive_similarity_tracker = keras.metrics.Mean(name="positive_similarity")
        self.negative_similarity_tracker = keras.metrics.Mean(name="negative_similarity")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.positive_similarity_tracker,
            self.negative_similarity_tracker,
            self.accuracy_tracker,
        ]

    def call(self, images, training=False):
        return self.query_model(images, training=training)

    # --- what a subclass defines -------------------------------------------------------

    def contrastive_rows(self, data, query_outputs, key_outputs):
        """Pairs queries with positive keys.

        Args:
            data: the batch dict.
            query_outputs, key_outputs: `(view1, view2)` outputs of the query and key
                networks.

        Returns:
            `(queries [N, D], positives [N, D], weights [N], keys_to_enqueue [M, D])`, all
            unit-norm float32 (weights: 1 for a row that counts, 0 for one that does not).
        """
        raise NotImplementedError

    # --- the shared training step ------------------------------------------------------

    def _key_permutation(self, batch_size, view_index):
        replica = tf.distribute.get_replica_context()
        replica_id = tf.cast(replica.replica_id_in_sync_group if replica else 0, tf.int64)
        seed = tf.stack(
            [
                tf.cast(self.seed, tf.int64) * 1009 + view_index,
                tf.cast(self.optimizer.iterations, tf.int64) * 64 + replica_id,
            ]
        )
        return tf.argsort(tf.random.stateless_uniform([batch_size], seed=seed))

    def _forward_keys(self, views):
        outputs = []
        for view_index, images in enumerate(views):
            permutation = None
            if self.shuffle_bn and self.bn_groups > 1:
                permutation = self._key_permutation(tf.shape(images)[0], view_index)
            outputs.append(
                tf.stop_gradient(
                    grouped_forward(self.key_model, images, self.bn_groups, permutation)
                )
            )
        return outputs

    def train_step(self, data):
        views = (data["view1"], data["view2"])
        key_outputs = self._forward_keys(views)
        queries_to_train = self.query_model.trainable_variables
        with tf.GradientTape() as tape:
            query_outputs = [grouped_forward(self.query_model, v, self.bn_groups) for v in views]
            queries, positives, weights, keys_to_enqueue = self.contrastive_rows(
                data, query_outputs, key_outputs
            )
            rows = losses.info_nce(queries, positives, self.queue, self.temperature)
            weights = tf.cast(weights, tf.float32)
            local_count = tf.reduce_sum(weights)
            # Keras sums gradients over replicas, so each replica's loss is its share of
            # the global mean: its own sum divided by the count over all replicas.
            global_count = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, local_count
            )
            loss = tf.reduce_sum(weights * rows["loss"]) / tf.maximum(global_count, 1.0)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, queries_to_train)
        step = self.optimizer.iterations
        self.optimizer.apply(gradients, queries_to_train)

        momentum = momentum_lib.momentum_at(
            step, self.momentum, self.total_steps, self.momentum_schedule
        )
        key_weights, query_weights = self.key_model.weights, self.query_model.weights
        momentum_lib.ema_update(
            [key_weights[i] for i in self._ema_indices],
            [query_weights[i] for i in self._ema_indices],
            momentum,
        )
        # Every replica enqueues the keys of all replicas, so all hold the same queue.
        all_keys = tf.distribute.get_replica_context().all_gather(keys_to_enqueue, axis=0)
        queue_lib.enqueue(self.queue, self.queue_pointer, all_keys)

        def weighted_mean(values):
            return tf.reduce_sum(weights * values) / tf.maximum(local_count, 1.0)

        self.loss_tracker.update_state(weighted_mean(rows["loss"]))
        self.positive_similarity_tracker.update_state(weighted_mean(rows["positive_similarity"]))
        self.negative_similarity_tracker.update_state(weighted_mean(rows["negative_similarity"]))
        self.accuracy_tracker.update_state(weighted_mean(rows["correct"]))
        return {m.name: m.result() for m in self.metrics}
