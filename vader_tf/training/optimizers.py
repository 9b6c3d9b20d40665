"""SGD as MoCo v2 and DenseCL train with it: PyTorch's `torch.optim.SGD` semantics.

Keras' `SGD(weight_decay=wd)` decays weights *decoupled* from the gradient
(`w -= lr * wd * w`, outside the momentum buffer). PyTorch's SGD, which the MoCo v2 and
DenseCL recipes (weight decay 1e-4) were tuned with, adds an L2 term to the gradient
*before* momentum, so at momentum 0.9 the decay acts about ten times more strongly. This
optimiser reproduces the PyTorch update, for every trainable variable:

    g <- g + wd * w          (coupled L2 weight decay)
    b <- momentum * b + g    (momentum buffer of raw gradients; b_0 = 0)
    w <- w - lr * b

It also keeps the buffer in gradient units as PyTorch does (Keras folds the learning rate
into it), which matters when the learning rate changes during training.

`scale_learning_rate` gives some variables a multiple of the rate (PyTorch's parameter
groups with `lr=scale * lr`): the whole step of such a variable, decay included, is
scaled, so a scale of 0 leaves it exactly as it is.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vader_tf")
class TorchSGD(keras.optimizers.SGD):
    """SGD with momentum and coupled L2 weight decay, as `torch.optim.SGD`.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: momentum of the gradient buffer (no dampening, no Nesterov).
        weight_decay: L2 coefficient added to the gradient (`g + wd * w`). Applies to all
            trainable variables, as in MoCo v2, unless excluded with Keras'
            `exclude_from_weight_decay` before the optimiser is built.
        **kwargs: other `keras.optimizers.Optimizer` arguments (except `weight_decay`
            semantics, which are the coupled ones above).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, weight_decay=0.0, name="torch_sgd", **kwargs):
        kwargs.pop("nesterov", None)
        # The base class's `weight_decay` is the decoupled kind; keep it off.
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.l2_weight_decay = float(weight_decay or 0.0)
        self._learning_rate_scales = {}

    def scale_learning_rate(self, var_list, scale):
        """Multiplies the learning rate of the variables in `var_list` by `scale` (>= 0).

        Like Keras' `exclude_from_weight_decay`, call it before the optimiser is built;
        the scales belong to this instance (they are not part of `get_config`).
        """
        if self.built:
            raise ValueError("scale_learning_rate() must be called before the optimizer is built.")
        if not scale >= 0:
            raise ValueError(f"A learning-rate scale must be at least 0, got {scale!r}.")
        self._learning_rate_scales.update({self._var_key(v): float(scale) for v in var_list})

    def update_step(self, gradient, variable, learning_rate):
        scale = self._learning_rate_scales.get(self._var_key(variable), 1.0)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        if scale != 1.0:
            learning_rate = ops.multiply(learning_rate, scale)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2_weight_decay and self._use_weight_decay(variable):
            gradient = ops.add(gradient, ops.multiply(variable, self.l2_weight_decay))
        if self.momentum != 0:
            buffer = self.momentums[self._get_variable_index(variable)]
            self.assign(buffer, ops.add(ops.multiply(buffer, self.momentum), gradient))
            gradient = buffer
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.pop("nesterov", None)
        config["weight_decay"] = self.l2_weight_decay
        return config
