"""Pretraining methods by name: the registry `pretrain.build_model` builds from.

A method is a `MomentumContrast` subclass that implements its hooks
(`contrastive_rows`, returning one `ContrastiveTerm` per declared `TermSpec`, and
`from_pretrain_config`) and sets `encoder`; decorating it with `@register_method("name")`
makes `--method=name` build it. Importing the method's module registers it
(`vader_tf.training.pretrain` imports the built-in `vader`, `moco` and `densecl`), so a
new method is one new file plus that import.

Example:
```python
@register_method("my_method")
class MyMethod(MomentumContrast):
    @classmethod
    def from_pretrain_config(cls, encoder, config, **common):
        return cls(encoder, **common)
    ...
```
"""

from vader_tf.training.momentum_contrast import MomentumContrast

_METHODS = {}


def register_method(name):
    """Class decorator registering a `MomentumContrast` subclass as method `name`."""

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, MomentumContrast)):
            raise TypeError(f"Method {name!r} must be a MomentumContrast subclass, got {cls!r}.")
        if _METHODS.get(name, cls) is not cls:
            raise ValueError(
                f"Method {name!r} is already registered by {_METHODS[name].__qualname__}."
            )
        _METHODS[name] = cls
        return cls

    return register


def registered_methods():
    """The registered method names, sorted."""
    return tuple(sorted(_METHODS))


def get_method(name):
    """The `MomentumContrast` subclass registered as `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the registered ones.
    """
    if name not in _METHODS:
        raise ValueError(
            f"Unknown method {name!r}; registered methods: "
            f"{', '.join(registered_methods()) or 'none'}."
        )
    return _METHODS[name]
