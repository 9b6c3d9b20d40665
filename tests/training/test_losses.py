import numpy as np
import tensorflow as tf

from tests.training import reference
from vader_tf.losses import info_nce


def _unit_rows(rng, n, d):
    return reference.unit(rng.normal(size=(n, d))).astype("float32")


def test_info_nce_matches_numpy_values_and_gradients():
    rng = np.random.default_rng(0)
    queries, positives, negatives = (_unit_rows(rng, n, 16) for n in (12, 12, 37))
    temperature = 0.2
    q = tf.constant(queries)
    with tf.GradientTape() as tape:
        tape.watch(q)
        rows = info_nce(q, positives, negatives, temperature)
        total = tf.reduce_sum(rows["loss"])
    expected_loss, expected_grad = reference.info_nce(queries, positives, negatives, temperature)
    np.testing.assert_allclose(rows["loss"].numpy(), expected_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(total, q).numpy(), expected_grad, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        rows["positive_similarity"].numpy(), np.sum(queries * positives, 1), atol=1e-6
    )
    np.testing.assert_allclose(
        rows["negative_similarity"].numpy(), (queries @ negatives.T).mean(1), atol=1e-6
    )
    expected_correct = np.sum(queries * positives, 1) > (queries @ negatives.T).max(1)
    np.testing.assert_array_equal(rows["correct"].numpy(), expected_correct.astype("float32"))


def test_info_nce_perfect_positive_has_low_loss_and_full_accuracy():
    rng = np.random.default_rng(1)
    queries = _unit_rows(rng, 8, 32)
    negatives = -queries[:4]  # opposite directions: never closer than the positive
    rows = info_nce(queries, queries, negatives, temperature=0.05)
    assert np.all(rows["correct"].numpy() == 1.0)
    # loss = log(1 + sum_j exp((n_j - 1) / T)) with every n_j < 1.
    bound = np.log1p(4 * np.exp((np.max(queries @ negatives.T, axis=1) - 1.0) / 0.05))
    assert np.all(rows["loss"].numpy() <= bound + 1e-6)


def test_info_nce_cost_is_rows_times_queue():
    # The only [N, K] intermediate is the logits: check by tracing its largest tensor.
    @tf.function
    def loss(q, k, n):
        return info_nce(q, k, n, 0.1)["loss"]

    graph = loss.get_concrete_function(
        tf.TensorSpec([64, 8]), tf.TensorSpec([64, 8]), tf.TensorSpec([1000, 8])
    ).graph
    largest = max(
        int(np.prod(t.shape.as_list()))
        for op in graph.get_operations()
        for t in op.outputs
        if t.shape.is_fully_defined()
    )
    assert largest <= 64 * 1001
