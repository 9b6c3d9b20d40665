"""What VADeR, MoCo and DenseCL share: a query network trained by InfoNCE against keys
from its momentum copy and queues of earlier keys.

Subclasses say what a contrastive row is (a matched pixel for VADeR, an image for MoCo,
an image and a matched C5 cell for DenseCL) by implementing `contrastive_rows`;
everything else lives here once: key and query forward passes with the batch-norm guard,
the loss scaled for the replica count, the optimiser step, the momentum update and the
all-gathered enqueue.

Contrastive terms. A method has one or more terms (`TermSpec`: name, queue size, key
width, loss weight), each with its own queue of negatives. `contrastive_rows` returns one
`ContrastiveTerm` of rows per declared term; the loss is the weighted sum over terms of
each term's weighted-mean InfoNCE, every term scaled for the replica count and enqueued
(masked, all-gathered) on its own. The first term's queue keeps the variable names of a
single-queue model, `queue` and `queue_pointer`, so older checkpoints still load; a
further term `name` holds `{name}_queue` and `{name}_queue_pointer`. With one term the
metrics are `loss`, `positive_similarity`, `negative_similarity` and `accuracy`; with
several, each term's are prefixed by its name (`dense_loss`, ...) and `loss` is the
weighted total.

Batch-norm leakage guard ("shuffle BN"): BN computes its statistics over the images that
go through the network together. If the query and its positive key are normalised with
statistics of the same group of images, the network can tell the current batch's keys from
the queue's by those statistics and lower the loss without learning features (MoCo,
Sec. 3.3). Queries are normalised per BN group: each replica splits each view's batch
into `bn_groups` contiguous groups. Keys are normalised per group of a random permutation
of the *global* batch: under several replicas each key view's images are all-gathered
with the per-image data the method's key reduction needs (`key_reduction_inputs`; VADeR:
the view's points) and permuted with a seed all replicas share (run seed, view, step);
each replica runs the key network on its slice of the permuted batch (again in
`bn_groups` groups per view), reduces the keys there to what the loss reads
(`reduce_keys`; VADeR: `[B, P, D]` samples at the points instead of whole stride-4 maps),
and the reduced keys are all-gathered and put back in order (MoCo's shuffle BN,
`BatchShuffle`). On one replica this is the same permutation within the replica.
`vader_tf.training.traffic` computes the bytes this gathers.

One forward call per network and step: the query network runs once on both views
concatenated and the key network once on its (shuffled) images of both views; the BN
groups are formed inside the batch norms (ghost batch norm,
`vader_tf.models.layers.batch_norm_groups`, see `grouped_forward` and `views_forward`):
each of the `views x bn_groups` groups is normalised with its own statistics and the
moving averages follow the groups in order, exactly as one call per view and group would,
while the convolutions run on the whole batch and mixed precision casts each weight once. With G key groups of n images in all, the expected share of a key's
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

import dataclasses

import keras
import tensorflow as tf

from vader_tf import losses
from vader_tf.models.layers import BatchNormalization, batch_norm_groups, use_fused_batch_norm
from vader_tf.training import momentum as momentum_lib
from vader_tf.training import queue as queue_lib


def grouped_forward(model, images, num_groups, training=True):
    """Runs `model` once on `images`, its batch norms normalising each of `num_groups`
    contiguous slices of the batch with that slice's own statistics (ghost batch norm,
    `vader_tf.models.layers.batch_norm_groups`): the same outputs, gradients and moving
    averages as one call per slice, in one pass of the network.

    `model` may have several outputs (any nest of batch-major tensors); its batch norms
    must be `vader_tf.models.layers.BatchNormalization` (`MomentumContrast` makes them so).
    """
    with batch_norm_groups(num_groups):
        return model(images, training=training)


def views_forward(model, views, num_groups, training=True):
    """One call of `model` on the concatenation of `views`, each view in `num_groups` BN
    groups of its own, so each image sees the statistics of a separate call per view and
    group; returns the outputs per view (None for a view given as None)."""
    present = [view for view in views if view is not None]
    if not present:
        return [None] * len(views)
    images = present[0] if len(present) == 1 else tf.concat(present, axis=0)
    outputs = grouped_forward(model, images, num_groups * len(present), training)
    flat = [tf.split(x, len(present)) for x in tf.nest.flatten(outputs)]
    per_view = iter(
        tf.nest.pack_sequence_as(outputs, [parts[i] for parts in flat])
        for i in range(len(present))
    )
    return [None if view is None else next(per_view) for view in views]


class BatchShuffle:
    """Moves per-image data to the replica that computes it under a permutation of the
    global batch, and results back (shuffle BN, see the module docstring).

    Args:
        permutation: `[R * b]` permutation of the global batch (the concatenation of all
            replicas' batches in replica order), identical on every replica.
        local_size: b, this replica's batch size.
        replica_context: the `tf.distribute` replica context (default: the current one).
    """

    def __init__(self, permutation, local_size, replica_context=None):
        self.replica = replica_context or tf.distribute.get_replica_context()
        self.permutation = permutation
        self.start = tf.cast(self.replica.replica_id_in_sync_group, tf.int32) * local_size
        self.local_size = local_size

    def _gather_replicas(self, x):
        if self.replica.num_replicas_in_sync == 1:
            return x
        # `identity` places the value on this replica's device: an input batch straight
        # from a multi-worker iterator has no device, which `all_gather` rejects.
        return self.replica.all_gather(tf.identity(x), axis=0)

    def _take(self, nest, indices):
        mine = indices[self.start : self.start + self.local_size]
        flat = [
            None if x is None else tf.gather(self._gather_replicas(x), mine)
            for x in tf.nest.flatten(nest)
        ]
        return tf.nest.pack_sequence_as(nest, flat)

    def shuffle(self, nest):
        """This replica's slice of the permuted global batch of each `[b, ...]` tensor."""
        return self._take(nest, self.permutation)

    def unshuffle(self, nest):
        """Results computed on `shuffle`d slices, back in this replica's own order."""
        return self._take(nest, tf.math.invert_permutation(self.permutation))


@dataclasses.dataclass(frozen=True)
class TermSpec:
    """One contrastive term a method declares: its queue and its weight in the loss.

    Attributes:
        name: the term's name (prefix of its metrics when a method has several terms;
            `{name}_queue` names the queue of every term but the first, see module
            docstring).
        queue_size: K, negatives kept in the term's queue.
        embedding_dim: channels of the term's keys.
        loss_weight: the term's weight in the total loss.
    """

    name: str
    queue_size: int
    embedding_dim: int
    loss_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ContrastiveTerm:
    """The rows of one term in one step, as `contrastive_rows` returns them.

    Attributes:
        name: the `TermSpec.name` these rows belong to.
        queries: `[N, D]` unit-norm float32 queries.
        positives: `[N, D]` unit-norm float32 positive keys (row i for query i).
        weights: `[N]` float32; 1 for a row that counts, 0 for one that does not.
        keys_to_enqueue: `[M, D]` unit-norm float32 keys for the term's queue (view 2's,
            which the key network runs on in every mode).
        enqueue_mask: `[M]` bool, True for the keys that may enter the queue (keys of
            invalid pairs must not).
    """

    name: str
    queries: tf.Tensor
    positives: tf.Tensor
    weights: tf.Tensor
    keys_to_enqueue: tf.Tensor
    enqueue_mask: tf.Tensor


class _WeightedSum(keras.metrics.Metric):
    """`sum_i weight_i * metric_i.result()`: the total loss over terms, read like a metric.

    Holds no state of its own: the term metrics accumulate (weighted by their own row
    counts, so each reads as its global mean) and are reset by the loop.
    """

    def __init__(self, weighted_metrics, name="loss"):
        super().__init__(name=name)
        self._weighted = tuple(weighted_metrics)

    def update_state(self, *args, **kwargs):
        pass

    def result(self):
        return tf.add_n([weight * metric.result() for weight, metric in self._weighted])

    def reset_state(self):
        pass


class MomentumContrast(keras.Model):
    """Base class: query network, momentum key network, key queue, custom `train_step`.

    Args:
        query_model: the network trained by gradient descent.
        key_model: a network of identical architecture; becomes the momentum copy (its
            weights are overwritten with the query's and never receive gradients).
        embedding_dim: channels of the keys held in the queue (single-term methods).
        queue_size: K, number of negative keys kept (single-term methods).
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
        terms: the method's `TermSpec`s, in the order `contrastive_rows` returns them;
            default: one term of weight 1 over `queue_size` keys of `embedding_dim`.
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
        terms=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(key_model.weights) != len(query_model.weights):
            raise ValueError("key_model must have the same architecture as query_model.")
        for model in (query_model, key_model):
            # Ghost batch norm (`grouped_forward`) needs our batch-norm layer everywhere.
            use_fused_batch_norm(model)
            others = [
                layer.name
                for layer in model._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.BatchNormalization)
                and not isinstance(layer, BatchNormalization)
            ]
            if others:
                raise ValueError(
                    f"{model.name}: batch norms {others[:3]} are not "
                    "vader_tf.models.layers.BatchNormalization; the BN guard cannot group them."
                )
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

        self.terms = tuple(terms or (TermSpec("contrast", queue_size, embedding_dim),))
        names = [term.name for term in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"Contrastive term names must be distinct, got {names}.")
        self._term_metrics = []
        for index, term in enumerate(self.terms):
            name = self._queue_name(index)
            # Attributes named as the variables: a checkpoint tracks them by attribute.
            queue = self.add_weight(
                shape=(term.queue_size, term.embedding_dim),
                initializer=lambda shape, dtype, s=seed + index: queue_lib.random_unit_rows(
                    shape, dtype, s
                ),
                trainable=False,
                name=name,
            )
            setattr(self, name, queue)
            setattr(
                self,
                f"{name}_pointer",
                self.add_weight(
                    shape=(), initializer="zeros", dtype="int64", trainable=False,
                    name=f"{name}_pointer",
                ),
            )
            prefix = f"{term.name}_" if len(self.terms) > 1 else ""
            self._term_metrics.append(
                {
                    key: keras.metrics.Mean(name=prefix + key)
                    for key in ("loss", "positive_similarity", "negative_similarity", "accuracy")
                }
            )
        self.loss_tracker = (
            self._term_metrics[0]["loss"]
            if len(self.terms) == 1
            else _WeightedSum(
                [(t.loss_weight, m["loss"]) for t, m in zip(self.terms, self._term_metrics)]
            )
        )
        # Steps whose update a loss-scaling optimiser skipped (non-finite float16
        # gradients); the batches read are `optimizer.iterations + skipped_steps`.
        self.skipped_steps = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="skipped_steps"
        )

    def _queue_name(self, index):
        """Term `index`'s queue variable (and attribute); its pointer adds `_pointer`."""
        return "queue" if index == 0 else f"{self.terms[index].name}_queue"

    def _queue_of(self, index):
        """The `(queue, pointer)` variables of term `index`."""
        name = self._queue_name(index)
        return getattr(self, name), getattr(self, f"{name}_pointer")

    @property
    def metrics(self):
        term_metrics = [m for metrics in self._term_metrics for m in metrics.values()]
        if len(self.terms) == 1:
            return term_metrics
        return [self.loss_tracker, *term_metrics]

    def call(self, images, training=False):
        return self.query_model(images, training=training)

    # --- the contract with the training loop and `pretrain.build_model` ---------------

    # The `DenseEncoder` the loop checkpoints and saves as the run's encoder; every
    # subclass sets it.
    encoder = None
    # Whether the two views must overlap (`PretrainConfig.min_overlap` applies).
    needs_overlapping_views = False
    # A `last_step.LastStepSample` the train step fills with a sample of its
    # similarities (set when TensorBoard pictures are on; None: nothing is recorded).
    last_step = None

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
        """Pairs queries with positive keys, for each of `self.directions` and each term.

        Args:
            data: the batch dict.
            query_outputs, key_outputs: `(view1, view2)` outputs of the query network
                and of the key network reduced by `reduce_keys`; an entry is None for a
                view that network did not run on (the one-direction step runs the query
                network on view 1 and the key network on view 2 only).

        Returns:
            One `ContrastiveTerm` per entry of `self.terms`, in that order.
        """
        raise NotImplementedError

    def key_reduction_inputs(self, data, view_index):
        """Per-image data `reduce_keys` needs for the keys of view `view_index`.

        Returns a nest of `[B, ...]` tensors of the batch dict `data`, or None. Under
        shuffle BN it travels with the images to the replica that runs the key network
        on them. Default: None (the key outputs are used whole).
        """
        return None

    def reduce_keys(self, key_outputs, inputs):
        """Reduces the key network's outputs for one view to what `contrastive_rows` reads.

        Runs on the replica that computed `key_outputs` (before shuffle BN gathers them
        back), so a small reduction saves collective traffic. Must treat each image on its
        own (the batch is a permuted slice of the global batch).

        Args:
            key_outputs: the key network's outputs on a batch of images of one view.
            inputs: `key_reduction_inputs` of the same images, in the same order.

        Returns:
            A nest of `[B, ...]` tensors (default: `key_outputs` unchanged).
        """
        return key_outputs

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

    def _forward_keys(self, data):
        """The key network's outputs per view, reduced by `reduce_keys` (None for a view
        it does not run on): one call of the network on all its images."""
        replica = tf.distribute.get_replica_context()
        num_replicas = replica.num_replicas_in_sync
        views = (data["view1"], data["view2"])
        key_views = {k for _, k in self.directions}
        shuffle = self.shuffle_bn and num_replicas * self.bn_groups > 1
        images, inputs, shuffles = [], [], []
        for view_index, view in enumerate(views):
            if view_index not in key_views:
                images.append(None)
                inputs.append(None)
                shuffles.append(None)
                continue
            reduction_inputs = self.key_reduction_inputs(data, view_index)
            if shuffle:
                local_size = tf.shape(view)[0]
                permutation = self._key_permutation(num_replicas * local_size, view_index)
                shuffles.append(BatchShuffle(permutation, local_size, replica))
                view, reduction_inputs = shuffles[-1].shuffle((view, reduction_inputs))
            else:
                shuffles.append(None)
            images.append(view)
            inputs.append(reduction_inputs)
        outputs = []
        for view_outputs, reduction_inputs, view_shuffle in zip(
            views_forward(self.key_model, images, self.bn_groups), inputs, shuffles
        ):
            if view_outputs is None:
                outputs.append(None)
                continue
            keys = self.reduce_keys(view_outputs, reduction_inputs)
            if view_shuffle is not None:
                keys = view_shuffle.unshuffle(keys)
            outputs.append(tf.nest.map_structure(tf.stop_gradient, keys))
        return outputs

    @property
    def skips_non_finite_steps(self):
        """Whether the optimiser skips steps with non-finite gradients: a Keras
        `LossScaleOptimizer` (mixed_float16) does; see `train_step`."""
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def _forward_state(self):
        """Variables the forward passes write: the BN moving statistics of both networks
        (every weight outside the EMA)."""
        ema = set(self._ema_indices)
        return [
            model.weights[i]
            for model in (self.query_model, self.key_model)
            for i in range(len(model.weights))
            if i not in ema
        ]

    def _apply_gradients(self, gradients, variables, replica):
        """The optimiser step; returns whether it was applied (a scalar bool tensor).

        A loss-scaling optimiser skips a step whose gradients are not all finite (it only
        lowers its loss scale). Keras decides that from each replica's own gradients (and
        under a merge call takes the first replica's word), so replicas could disagree;
        here the replicas agree first, and a step non-finite on any replica is skipped on
        all (its gradients are made non-finite everywhere, so Keras skips it too).
        """
        if not self.skips_non_finite_steps:
            self.optimizer.apply(gradients, variables)
            return tf.constant(True)
        local_non_finite = tf.cast(
            tf.logical_not(self.optimizer.check_finite(gradients)), tf.float32
        )
        applied = tf.equal(replica.all_reduce(tf.distribute.ReduceOp.SUM, local_non_finite), 0.0)
        gradients = list(gradients)
        first = next(i for i, g in enumerate(gradients) if g is not None)
        # x * 1 is x, bit for bit: an applied step's gradients are unchanged.
        gradients[first] = gradients[first] * tf.cast(
            tf.where(applied, 1.0, float("nan")), gradients[first].dtype
        )
        self.optimizer.apply(gradients, variables)
        return applied

    def train_step(self, data):
        """One step; every state change follows the optimiser's applied updates.

        A step the loss-scaling optimiser skips (non-finite float16 gradients) changes
        nothing but the loss scale and `skipped_steps`: the BN moving statistics its
        forward passes wrote are put back, the EMA uses momentum 1, nothing is enqueued,
        and its rows are left out of the metrics (so a non-finite loss of a skipped step
        does not reach the loop's loss check). `optimizer.iterations` counts the applied
        updates; the learning-rate and momentum schedules and the BN shuffle follow it.
        """
        forward_state = (
            [tf.identity(v) for v in self._forward_state()]
            if self.skips_non_finite_steps
            else []
        )
        key_outputs = self._forward_keys(data)
        replica = tf.distribute.get_replica_context()
        queries_to_train = self.query_model.trainable_variables
        with tf.GradientTape() as tape:
            query_views = {q for q, _ in self.directions}
            # One call on the query views, each view in its own `bn_groups` BN groups.
            views = (data["view1"], data["view2"])
            query_outputs = views_forward(
                self.query_model,
                [v if i in query_views else None for i, v in enumerate(views)],
                self.bn_groups,
            )
            terms = tuple(self.contrastive_rows(data, query_outputs, key_outputs))
            names = [term.name for term in terms]
            if names != [spec.name for spec in self.terms]:
                raise ValueError(
                    f"{type(self).__name__}.contrastive_rows returned terms {names}; "
                    f"declared: {[spec.name for spec in self.terms]}."
                )
            rows = [
                losses.info_nce(t.queries, t.positives, self._queue_of(i)[0], self.temperature)
                for i, t in enumerate(terms)
            ]
            weights = [tf.cast(term.weights, tf.float32) for term in terms]
            local_counts = tf.stack([tf.reduce_sum(w) for w in weights])
            # Keras sums gradients over replicas, so each replica's loss is its share of
            # the global mean: its own sum divided by the count over all replicas (per
            # term; one collective for all terms).
            global_counts = replica.all_reduce(tf.distribute.ReduceOp.SUM, local_counts)
            loss = tf.add_n(
                [
                    spec.loss_weight
                    * tf.reduce_sum(w * r["loss"])
                    / tf.maximum(global_counts[i], 1.0)
                    for i, (spec, w, r) in enumerate(zip(self.terms, weights, rows))
                ]
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, queries_to_train)
        # The step this update belongs to, read before `apply` increments it.
        momentum = momentum_lib.momentum_at(
            tf.identity(self.optimizer.iterations),
            self.momentum,
            self.total_steps,
            self.momentum_schedule,
        )
        applied = self._apply_gradients(gradients, queries_to_train, replica)
        if self.skips_non_finite_steps:
            for variable, before in zip(self._forward_state(), forward_state):
                variable.assign(tf.where(applied, variable, before))
            self.skipped_steps.assign_add(tf.cast(tf.logical_not(applied), tf.int64))
        # Momentum 1 leaves the key network as it is.
        momentum = tf.where(applied, momentum, tf.ones_like(momentum))

        key_weights, query_weights = self.key_model.weights, self.query_model.weights
        momentum_lib.ema_update(
            [key_weights[i] for i in self._ema_indices],
            [query_weights[i] for i in self._ema_indices],
            momentum,
        )
        # Every replica enqueues the valid keys of all replicas, so all hold the same queues.
        # (The mask travels as float: collectives such as NCCL do not gather bools.)
        for index, term in enumerate(terms):
            all_mask = replica.all_gather(tf.cast(term.enqueue_mask, tf.float32), axis=0)
            queue_lib.enqueue(
                *self._queue_of(index),
                replica.all_gather(term.keys_to_enqueue, axis=0),
                tf.logical_and(all_mask > 0.5, applied),
            )

        if self.last_step is not None:
            for index, (w, r) in enumerate(zip(weights, rows)):
                self.last_step.record(index, r, w, applied)

        # Metrics weighted by each replica's count of rows, so that the value read across
        # replicas (sum of weighted totals / sum of counts) is the global mean.
        # A skipped step counts no rows.
        for index, (w, r, trackers) in enumerate(zip(weights, rows, self._term_metrics)):
            local_count = local_counts[index]
            for key, values in (
                ("loss", r["loss"]),
                ("positive_similarity", r["positive_similarity"]),
                ("negative_similarity", r["negative_similarity"]),
                ("accuracy", r["correct"]),
            ):
                mean = tf.reduce_sum(w * values) / tf.maximum(local_count, 1.0)
                trackers[key].update_state(
                    tf.where(applied, mean, 0.0),
                    sample_weight=tf.where(applied, local_count, 0.0),
                )
        return {m.name: m.result() for m in self.metrics}
