"""InfoNCE against a queue of negatives, for pixels (VADeR) and images (MoCo).

Each row pairs a query with its positive key; all rows share the same negatives (the
queue). The cost is `O(N * K)` in the number of rows N and the queue size K: no
pixel-by-pixel similarity matrix is ever formed.
"""

import tensorflow as tf


def info_nce(queries, positives, negatives, temperature):
    """Per-row InfoNCE with one positive and a shared set of negatives.

    Args:
        queries: `[N, D]` unit-norm query embeddings.
        positives: `[N, D]` unit-norm positive keys (row i is the positive of query i).
        negatives: `[K, D]` unit-norm negative keys (the queue).
        temperature: softmax temperature.

    Returns:
        A dict of `[N]` tensors: `loss` (cross-entropy of the positive among
        `1 + K` candidates), `positive_similarity`, `negative_similarity` (mean cosine to
        the negatives) and `correct` (1.0 where the positive beats every negative);
        and `negative_similarities`, the `[N, K]` cosines to the negatives the loss
        computes anyway (for a sample of them, `training.last_step`; unused, it costs
        nothing in a graph).
    """
    queries = tf.cast(queries, tf.float32)
    positives = tf.cast(positives, tf.float32)
    negatives = tf.cast(negatives, tf.float32)
    positive_similarity = tf.reduce_sum(queries * positives, axis=-1)
    negative_similarity = tf.matmul(queries, negatives, transpose_b=True)
    # The positive joins the negatives through their log-sum-exp rather than a
    # concatenated [N, 1 + K] copy of the logits, which saves an N x K tensor forward
    # and backward: -log softmax_0([p, n_1..n_K]) = softplus(logsumexp(n) - p).
    negative_logits = negative_similarity / temperature
    positive_logit = positive_similarity / temperature
    loss = tf.nn.softplus(tf.reduce_logsumexp(negative_logits, axis=1) - positive_logit)
    correct = tf.cast(
        positive_similarity > tf.reduce_max(negative_similarity, axis=1), tf.float32
    )
    return {
        "loss": loss,
        "positive_similarity": positive_similarity,
        "negative_similarity": tf.reduce_mean(negative_similarity, axis=1),
        "correct": correct,
        "negative_similarities": negative_similarity,
    }
