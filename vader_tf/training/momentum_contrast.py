"""What VADeR and its MoCo baseline share: a query network trained by InfoNCE against
keys from its momentum copy and a queue of earlier keys.

Subclasses say what a contrastive row is (a matched pixel for VADeR, an image for MoCo)
by implementing `contrastive_rows`; everything else lives here once: key and query forward
passes with the batch-norm guard, the loss scaled for the replica count, the optimiser
step, the momentum update and the all-gathered enqueue.

Batch-norm leakage guard ("shuffle BN"): BN computes its statistics over the images that
go through the network together. If the query and its positive key are normalised with
statistics of the same group of images, the network can tell the current batch's keys from
the queue's by those statistics and lower the loss without learning features (MoCo,
Sec. 3.3). Queries are normalised per BN group: each replica splits its batch into
`bn_groups` contiguous groups. Keys are normalised per group of a random permutation of
the *global* batch: under several replicas the key batch is all-gathered, permuted with a
seed all replicas share (run seed, view, step), each replica runs the key network on its
slice of the permuted batch (again in `bn_groups` groups), and the keys are all-gathered
and put back in order (MoCo's shuffle BN). On one replica this is the same permutation
within the replica. With G key groups of n images in all, the expected share of a key's
BN group that are its query's own group-mates is `(1 + (n - 1)^2 / (G n - 1)) / n`
(chance level `1/G`): 52% at G=2, n=16 (one device, 32 images, 2 groups), so on one
device the guard is weak; 15% at G=8, n=32 (MoCo's 8 GPUs); see docs/training.md. SyncBN would defeat the guard.
`shuffle_bn=False` (or one group on one replica) turns it off.

Directions. The symmetric step (default) trains both directions of each pair: queries of
view 1 against keys of view 2 and queries of view 2 against keys of view 1, so both
networks run on both views. `symmetric_loss=False` is the one-direction step of MoCo v2
and DenseCL: queries of view 1 against keys of view 2 only, so the query network runs on
view 1 and the key network on view 2, half the backbone work per pair (and half the loss
rows). The queue receives keys of view 2 in both modes, the view the key network always
sees.
"""

import keras
import tensorflow as tf

from vader_tf import losses
from vader_tf.training import momentum as momentum_lib
from vader_tf.training import queue as queue_lib


def grouped_forward(model, images, num_groups, training=True):
    """Runs `model` on `num_groups` contiguous slices of the batch so BN sees each alone."""
    if num_groups == 1:
        return model(images, training=training)
    return tf.concat(
        [model(chunk, training=training) for chunk in tf.split(images, num_groups)], axis=0
    )


def shuffled_forward(model, images, num_groups, permutation, replica_context=None):
    """Runs `model` on this replica's slice of the permuted global batch; shuffle BN.

    Args:
        model: the key network.
        images: this replica's `[b, ...]` batch.
        num_groups: BN groups per replica.
        permutation: `[R * b]` permutation of the global batch (the concatenation of all
            replicas' batches in replica order), identical on every replica.
        replica_context: the `tf.distribute` replica context (default: the current one).

    Returns:
        `model`'s outputs for `images`, in their order, each computed in the BN group of
        the permuted global batch that the image fell into.
    """
    replica = replica_context or tf.distribute.get_replica_context()
    num_replicas = replica.num_replicas_in_sync

    def gather_replicas(x):
        # `identity` places the value on this replica's device: an input batch straight
        # from a multi-worker iterator has no device, which `all_gather` rejects.
        return replica.all_gather(tf.identity(x), axis=0) if num_replicas > 1 else x

    local_size = tf.shape(images)[0]
    start = tf.cast(replica.replica_id_in_sync_group, tf.int32) * local_size
    mine = permutation[start : start + local_size]
    outputs = grouped_forward(model, tf.gather(gather_replicas(images), mine), num_groups)
    # Outputs of all replicas, in permuted order; take back this replica's images.
    inverse = tf.math.invert_permutation(permutation)
    return tf.gather(gather_replicas(outputs), inverse[start : start + local_size])


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
        shuffle_bn: normalise keys per group of a permutation of the global batch
            (across replicas; see module docstring).
        seed: seed of the queue initialisation and of the BN shuffles.
        symmetric_loss: train both directions of each pair (True) or only queries of
            view 1 against keys of view 2 (False: half the backbone work per pair; see
            module docstring).
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
        symmetric_loss=True,
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
        self.symmetric_loss = symmetric_loss
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

    # --- the contract with the training loop and `pretrain.build_model` ---------------

    # The `DenseEncoder` the loop checkpoints and saves as the run's encoder; every
    # subclass sets it.
    encoder = None
    # Whether the two views must overlap (`PretrainConfig.min_overlap` applies).
    needs_overlapping_views = False

    @classmethod
    def from_pretrain_config(cls, encoder, config, **common):
        """The method for a `PretrainConfig` around `encoder` (see `methods.register_method`).

        Args:
            encoder: the query `DenseEncoder`, built from `config`.
            config: the `PretrainConfig`, for the method's own settings.
            **common: `MomentumContrast` arguments (queue, temperature, momentum, BN
                guard, seed), already taken from `config`.
        """
        raise NotImplementedError

    # --- what a subclass defines -------------------------------------------------------

    @property
    def directions(self):
        """`(query_view, key_view)` index pairs the step trains: `((0, 1), (1, 0))` when
        symmetric, else `((0, 1),)`. The key view of the first direction is view 2."""
        return ((0, 1), (1, 0)) if self.symmetric_loss else ((0, 1),)

    def contrastive_rows(self, data, query_outputs, key_outputs):
        """Pairs queries with positive keys, for each of `self.directions`.

        Args:
            data: the batch dict.
            query_outputs, key_outputs: `(view1, view2)` outputs of the query and key
                networks; an entry is None for a view that network did not run on (the
                one-direction step runs the query network on view 1 and the key network
                on view 2 only).

        Returns:
            `(queries [N, D], positives [N, D], weights [N], keys_to_enqueue [M, D],
            enqueue_mask [M])`: the first four unit-norm float32 (weights: 1 for a row that
            counts, 0 for one that does not); `enqueue_mask` is True for the keys that may
            enter the queue (keys of invalid pairs must not). The keys to enqueue are
            view 2's, which the key network runs on in every mode.
        """
        raise NotImplementedError

    # --- the shared training step ------------------------------------------------------

    def _key_permutation(self, global_batch_size, view_index):
        """The BN shuffle of one view's global key batch; the same on every replica."""
        seed = tf.stack(
            [
                tf.cast(self.seed, tf.int64) * 1009 + view_index,
                tf.cast(self.optimizer.iterations, tf.int64),
            ]
        )
        return tf.argsort(tf.random.stateless_uniform([global_batch_size], seed=seed))

    def _forward_keys(self, views):
        replica = tf.distribute.get_replica_context()
        num_replicas = replica.num_replicas_in_sync
        key_views = {k for _, k in self.directions}
        outputs = []
        for view_index, images in enumerate(views):
            if view_index not in key_views:
                outputs.append(None)
                continue
            if self.shuffle_bn and num_replicas * self.bn_groups > 1:
                permutation = self._key_permutation(
                    num_replicas * tf.shape(images)[0], view_index
                )
                keys = shuffled_forward(
                    self.key_model, images, self.bn_groups, permutation, replica
                )
            else:
                keys = grouped_forward(self.key_model, images, self.bn_groups)
            outputs.append(tf.stop_gradient(keys))
        return outputs

    def train_step(self, data):
        views = (data["view1"], data["view2"])
        key_outputs = self._forward_keys(views)
        replica = tf.distribute.get_replica_context()
        queries_to_train = self.query_model.trainable_variables
        with tf.GradientTape() as tape:
            query_views = {q for q, _ in self.directions}
            query_outputs = [
                grouped_forward(self.query_model, v, self.bn_groups) if i in query_views else None
                for i, v in enumerate(views)
            ]
            queries, positives, weights, keys_to_enqueue, enqueue_mask = self.contrastive_rows(
                data, query_outputs, key_outputs
            )
            rows = losses.info_nce(queries, positives, self.queue, self.temperature)
            weights = tf.cast(weights, tf.float32)
            local_count = tf.reduce_sum(weights)
            # Keras sums gradients over replicas, so each replica's loss is its share of
            # the global mean: its own sum divided by the count over all replicas.
            global_count = replica.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
            loss = tf.reduce_sum(weights * rows["loss"]) / tf.maximum(global_count, 1.0)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, queries_to_train)
        # The step this update belongs to, read before `apply` increments it.
        momentum = momentum_lib.momentum_at(
            tf.identity(self.optimizer.iterations),
            self.momentum,
            self.total_steps,
            self.momentum_schedule,
        )
        self.optimizer.apply(gradients, queries_to_train)

        key_weights, query_weights = self.key_model.weights, self.query_model.weights
        momentum_lib.ema_update(
            [key_weights[i] for i in self._ema_indices],
            [query_weights[i] for i in self._ema_indices],
            momentum,
        )
        # Every replica enqueues the valid keys of all replicas, so all hold the same queue.
        # (The mask travels as float: collectives such as NCCL do not gather bools.)
        all_mask = replica.all_gather(tf.cast(enqueue_mask, tf.float32), axis=0)
        queue_lib.enqueue(
            self.queue,
            self.queue_pointer,
            replica.all_gather(keys_to_enqueue, axis=0),
            all_mask > 0.5,
        )

        # Metrics weighted by each replica's count of rows, so that the value read across
        # replicas (sum of weighted totals / sum of counts) is the global mean.
        def weighted_mean(values):
            return tf.reduce_sum(weights * values) / tf.maximum(local_count, 1.0)

        for tracker, values in (
            (self.loss_tracker, rows["loss"]),
            (self.positive_similarity_tracker, rows["positive_similarity"]),
            (self.negative_similarity_tracker, rows["negative_similarity"]),
            (self.accuracy_tracker, rows["correct"]),
        ):
            tracker.update_state(weighted_mean(values), sample_weight=local_count)
        return {m.name: m.result() for m in self.metrics}
