"""A fixed-size sample of the last training step's similarities, for TensorBoard's
histograms (`vader_tf.training.summaries`).

The train step keeps only the means of its similarities as metrics. When pictures are
on, `MomentumContrast.train_step` also hands each term's InfoNCE rows to a
`LastStepSample`, which copies a fixed-size slice of them into its variables:

- positives: the positive similarity (query . its positive key) of at most
  `positives` rows, evenly spaced over the term's rows (all of them when there are
  fewer: row `floor(i * N / positives)` for i < positives when N > positives);
- negatives: the similarities of at most `negative_rows` rows (evenly spaced the same
  way) to at most `negative_keys` entries of the term's queue (evenly spaced over the
  queue), read from the `[N, K]` matrix the loss computes anyway
  (`losses.info_nce`'s `negative_similarities`), so no similarity is computed twice;
- a weight per entry: 1 for a row that counts in the loss (see `ContrastiveTerm.weights`)
  and exists, 0 otherwise (padding, invalid pairs).

Each step overwrites them, except a step the loss-scaling optimiser skips (non-finite
float16 gradients), which is no training step. The cost is a few gathers of at most
`positives + negative_rows * negative_keys` floats per term and step; nothing of this
exists when pictures are off.

The variables are not part of the model's checkpoint or weights: `LastStepSample` is a
plain object (no `tf.train` or Keras tracking), so a run with pictures writes the same
checkpoints as one without and resumes bitwise the same. Under several replicas each
replica writes its own copy (`ON_READ` variables, no collective) and a read outside the
replicas returns the first replica's (`ONLY_FIRST_REPLICA`): the histograms show the
rows of replica 0 of the chief.
"""

import tensorflow as tf

POSITIVES = 256
NEGATIVE_ROWS = 16
NEGATIVE_KEYS = 64


def evenly_spaced(count, size):
    """`(indices, present)`, int32 and bool `[size]`: `size` indices evenly spaced over
    `count` items (`floor(i * count / size)`), or the first `count` items and then
    padding (`present` False, index clamped to a real item) when `count < size`."""
    count = tf.cast(count, tf.int64)
    spread = tf.range(size, dtype=tf.int64) * tf.maximum(count, size) // size
    present = spread < count
    indices = tf.minimum(spread, tf.maximum(count - 1, 0))
    return tf.cast(indices, tf.int32), present


class _TermSample:
    """The variables of one term (see the module docstring)."""

    def __init__(self, positives, negative_rows, negative_keys):
        def variable(shape, name):
            return tf.Variable(
                tf.zeros(shape, tf.float32),
                trainable=False,
                name=name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        self.positive = variable([positives], "last_step_positive")
        self.positive_weight = variable([positives], "last_step_positive_weight")
        self.negative = variable([negative_rows, negative_keys], "last_step_negative")
        self.negative_weight = variable([negative_rows, negative_keys], "last_step_negative_weight")


class LastStepSample:
    """Per-term variables holding a sample of the last step's similarities.

    Create it under the strategy's scope (the variables are per replica), before the
    train step is traced, and set it as `MomentumContrast.last_step`.

    Args:
        term_names: the method's term names (`TermSpec.name`), in order.
        positives, negative_rows, negative_keys: sizes of the sample (module docstring).
    """

    def __init__(
        self,
        term_names,
        positives=POSITIVES,
        negative_rows=NEGATIVE_ROWS,
        negative_keys=NEGATIVE_KEYS,
    ):
        self.term_names = tuple(term_names)
        self._terms = [_TermSample(positives, negative_rows, negative_keys) for _ in self.term_names]

    def record(self, index, rows, weights, applied):
        """Keeps the sample of term `index`'s rows of this step (in replica context).

        Args:
            index: the term's position in `term_names`.
            rows: `losses.info_nce`'s output for the term (`positive_similarity` `[N]`,
                `negative_similarities` `[N, K]`).
            weights: `[N]` float32 row weights (0: the row does not count).
            applied: scalar bool, whether the optimiser applied this step.
        """
        sample = self._terms[index]
        positive = tf.cast(rows["positive_similarity"], tf.float32)
        weights = tf.cast(weights, tf.float32)
        count = tf.shape(positive)[0]
        picked, present = evenly_spaced(count, sample.positive.shape[0])
        negative_rows, negative_keys = sample.negative.shape
        row_picked, row_present = evenly_spaced(count, negative_rows)
        matrix = rows["negative_similarities"]
        key_picked, key_present = evenly_spaced(tf.shape(matrix)[1], negative_keys)
        row_weight = tf.where(row_present, tf.gather(weights, row_picked), 0.0)
        for variable, value in (
            (sample.positive, tf.gather(positive, picked)),
            (sample.positive_weight, tf.where(present, tf.gather(weights, picked), 0.0)),
            (
                sample.negative,
                tf.gather(tf.gather(tf.cast(matrix, tf.float32), row_picked), key_picked, axis=1),
            ),
            (sample.negative_weight, row_weight[:, None] * tf.cast(key_present, tf.float32)),
        ):
            variable.assign(tf.where(applied, value, variable))

    def values(self):
        """`{name: (positives, negatives)}`: each term's sampled similarities that count
        (weight > 0), flat float32 tensors, as last recorded (first replica's). `name`
        is the term's name, or "" for a method of one term."""
        found = {}
        for name, sample in zip(self.term_names, self._terms):
            key = name if len(self.term_names) > 1 else ""
            found[key] = tuple(
                tf.boolean_mask(tf.reshape(values, [-1]), tf.reshape(weights, [-1]) > 0)
                for values, weights in (
                    (sample.positive.read_value(), sample.positive_weight.read_value()),
                    (sample.negative.read_value(), sample.negative_weight.read_value()),
                )
            )
        return found
