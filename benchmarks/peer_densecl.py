"""The PyTorch peer inside our suite: DenseCL assembled from `lightly`'s public API with
torchvision ResNets, timed round by round with our MoCo and VADeR train steps in one
process, in float32 and bfloat16, with FLOPs counted for every step.

The peer's step (`PeerDenseCL`) is DenseCL as its paper trains it: a query network
(ResNet without pooling and classifier, a global and a dense `DenseCLProjectionHead`) and
its momentum copy (`update_momentum`) that computes the keys without gradients; each
dense query is paired with the key pixel whose backbone feature is most similar
(`select_most_similar`); global and dense InfoNCE (`NTXentLoss` with a memory bank of
negatives each), weighted 1/2 and 1/2; SGD. "one_direction" runs the query network on
view 1 and the key network on view 2 (MoCo v2 / DenseCL); "symmetric" also the other way
round, with twice the backbone work, as our steps do. bfloat16 is `torch.autocast`.

Fair conditions:

* Same images: our steps' real batch from the pipeline, standardised and transposed to
  NCHW for torch outside the timed region (our models standardise inside theirs).
* Same thread count (`THREADS` = 2 = the cores here) for both frameworks' intra-op pools.
* `OMP_WAIT_POLICY=PASSIVE`, set below before torch is imported, because torch's OpenMP
  runtime (libgomp) reads it once when it loads. By default OpenMP workers spin-wait after
  each parallel region; interleaved with TensorFlow's own thread pools on 2 cores of a
  shared machine, the spinning threads keep the cores from everything else, torch's next
  region included (the peer measured 4.8x slower that way). PASSIVE puts idle workers to
  sleep. TensorFlow's CPU kernels use Eigen/oneDNN thread pools, not OpenMP, so the
  variable touches torch only. Set it in the environment to override.
* FLOPs: torch's `torch.utils.flop_counter.FlopCounterMode` over one peer step, our
  graph counter (`common.graph_flops`) over each traced step of ours; both count 2 FLOPs
  per multiply-add of convolutions (forward and both gradients) and matmuls. As a check
  that the two counters agree, both count one forward pass of the same ResNet
  (torchvision's and keras-hub's, same layout) on one image (`flop_counter_check`).

Adding a step to compare is one line in `OURS` or `PEER`. A step of ours whose option
`PretrainConfig` does not have yet is listed under `skipped`.

    pip install -e ".[peer]"
    python -m benchmarks.peer_densecl [--quick]
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp

import copy  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.precision import PRECISIONS  # noqa: E402
from vader_tf.models.backbone import build_backbone  # noqa: E402
from vader_tf.models.layers import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from vader_tf.training.pretrain import PretrainConfig  # noqa: E402

NAME = "peer_densecl"
THREADS = 2
# The steps compared, one line each. Ours: `PretrainConfig` fields; the peer's:
# `PeerDenseCL` arguments. Each runs in every precision of `PRECISIONS`.
OURS = {
    "moco": dict(method="moco"),
    "vader": dict(method="vader"),
    # The one-direction step of issue 13, section 2 (`PretrainConfig.symmetric_loss`).
    "vader_one_direction": dict(method="vader", symmetric_loss=False),
}
PEER = {
    "peer_densecl_one_direction": dict(symmetric=False),
    "peer_densecl_symmetric": dict(symmetric=True),
}
# Targets of issue 22 (issue 13 asked 1.0 at ResNet-50): our one-direction VADeR step in
# bfloat16 against the peer's one-direction step (in its faster precision), in images per
# second.
TARGET_STEP = "vader_one_direction/bfloat16"
STAND_IN_STEP = "vader/bfloat16"
TARGET_PEER = "peer_densecl_one_direction"
TARGET_RATIOS = {"resnet18@96_batch32": 1.5, "resnet50@224_batch8": 1.5}


def cases(quick):
    """`(name, config_fields, repeats)`: the configurations of issue 13."""
    if quick:
        return [("resnet18@64_batch4", dict(backbone="resnet18", image_size=64, batch_size=4), 2)]
    return [
        ("resnet18@96_batch32", dict(backbone="resnet18", image_size=96, batch_size=32), 5),
        ("resnet50@224_batch8", dict(backbone="resnet50", image_size=224, batch_size=8), 5),
    ]


def quick_selection(name):
    """The steps of a quick run: every peer step, and of ours only the bfloat16 VADeR step
    (tracing a step of ours costs far more than the whole peer)."""
    return name.startswith("peer_") or name == "vader/bfloat16"


# --- the peer --------------------------------------------------------------------------

_torchvision_stub_ops = None


def import_peer():
    """`(torch, torchvision, lightly modules)`, or ImportError naming the extra to install.

    The extras pin torch 2.14.1 with torchvision 0.29.1, which load together. With a
    mismatched pair (torch 2.13.0+cpu beside PyPI's torchvision 0.28.0, built against CUDA
    torch) torchvision's compiled ops (nms, roi_align, ...) cannot load, and its import
    fails registering a fake kernel for `torchvision::nms`. The ResNets use none of those
    ops, so in that case the two schemas the registration needs are declared and the
    import is retried (`torchvision_compiled_ops` in the JSON says which case ran).
    """
    global _torchvision_stub_ops
    # torch's x86_64 wheel brings triton, whose libtriton crashes the process (SIGSEGV)
    # when loaded after TensorFlow (their LLVM symbols clash). torch imports it only to
    # offer its GPU kernel compiler, which this CPU peer does not use, and reads an
    # ImportError as "no triton", so it is made unimportable here.
    sys.modules.setdefault("triton", None)
    try:
        import torch
        import lightly  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"{NAME} needs the `peer` extra: pip install -e '.[peer]' ({error})"
        ) from error
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for module in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[module]
        _torchvision_stub_ops = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _torchvision_stub_ops.define(
                f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )
        import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import DenseCLProjectionHead
    from lightly.models.utils import select_most_similar, update_momentum

    lightly_api = dict(
        NTXentLoss=NTXentLoss,
        DenseCLProjectionHead=DenseCLProjectionHead,
        select_most_similar=select_most_similar,
        update_momentum=update_momentum,
    )
    return torch, torchvision, lightly_api


class PeerDenseCL:
    """One DenseCL training step per call, built from lightly's API (see module doc).

    Args:
        backbone: torchvision ResNet name ("resnet18", "resnet50").
        symmetric: also run view 2 through the query network against view 1's keys.
        batch_size: for the learning rate (linear scaling from 0.03 at 256, as MoCo v2).
        queue_size, temperature, ema_momentum, embedding_dim: as our `PretrainConfig`.
    """

    def __init__(self, backbone, symmetric, batch_size, queue_size=4096, temperature=0.2,
                 ema_momentum=0.99, embedding_dim=128):
        torch, torchvision, api = import_peer()
        self.torch, self.api = torch, api
        trunk = getattr(torchvision.models, backbone)()
        channels = trunk.fc.in_features
        head = api["DenseCLProjectionHead"]
        self.query = torch.nn.ModuleDict(
            {
                # Everything up to C5 (no global pooling, no classifier).
                "backbone": torch.nn.Sequential(*list(trunk.children())[:-2]),
                "global_head": head(channels, channels, embedding_dim),
                "dense_head": head(channels, channels, embedding_dim),
            }
        )
        self.key = copy.deepcopy(self.query).requires_grad_(False)
        self.symmetric = symmetric
        self.ema_momentum = ema_momentum
        # Each loss keeps its own memory bank of negatives (global and dense keys).
        bank = (queue_size, embedding_dim)
        self.global_loss = api["NTXentLoss"](temperature, memory_bank_size=bank)
        self.dense_loss = api["NTXentLoss"](temperature, memory_bank_size=bank)
        self.optimizer = torch.optim.SGD(
            self.query.parameters(), lr=0.03 * batch_size / 256, momentum=0.9, weight_decay=1e-4
        )

    @staticmethod
    def _embed(network, images):
        """`(backbone pixels [B, HW, C], global embedding [B, D], dense [B, HW, D])`."""
        c5 = network["backbone"](images)
        pixels = c5.flatten(2).transpose(1, 2)
        return pixels, network["global_head"](c5.mean(dim=(2, 3))), network["dense_head"](pixels)

    def __call__(self, view1, view2, dtype="float32"):
        torch = self.torch
        pairs = [(view1, view2), (view2, view1)] if self.symmetric else [(view1, view2)]
        self.api["update_momentum"](self.query, self.key, m=self.ema_momentum)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            with torch.no_grad():
                keys = [self._embed(self.key, key_view) for _, key_view in pairs]
            queries = [self._embed(self.query, query_view) for query_view, _ in pairs]
            matched_keys = [
                self.api["select_most_similar"](q_pixels.detach(), k_pixels, k_dense)
                for (q_pixels, _, _), (k_pixels, _, k_dense) in zip(queries, keys)
            ]
            global_loss = self.global_loss(
                torch.cat([q[1] for q in queries]), torch.cat([k[1] for k in keys])
            )
            dense_loss = self.dense_loss(
                torch.cat([q[2].flatten(0, 1) for q in queries]),
                torch.cat([k.flatten(0, 1) for k in matched_keys]),
            )
            loss = 0.5 * global_loss + 0.5 * dense_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def torch_views(batch):
    """Our batch's two views as standardised NCHW float32 torch tensors."""
    import torch

    mean, std = np.array(IMAGENET_MEAN, "float32"), np.array(IMAGENET_STD, "float32")
    return [
        torch.from_numpy(((batch[k].numpy() - mean) / std).transpose(0, 3, 1, 2).copy())
        for k in ("view1", "view2")
    ]


def torch_flops(fn):
    """FLOPs of one call of `fn`, by `torch.utils.flop_counter.FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flop_counter_check(backbone, image_size):
    """One image's forward pass through the same ResNet, counted by both counters."""
    torch, torchvision, _ = import_peer()
    trunk = torch.nn.Sequential(*list(getattr(torchvision.models, backbone)().children())[:-2])
    trunk.eval()  # one image: batch-norm statistics of a single value would not do
    with torch.no_grad():
        torch_count = torch_flops(lambda: trunk(torch.zeros(1, 3, image_size, image_size)))
    ours = build_backbone(backbone)
    graph = tf.function(lambda x: ours(x)).get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3])
    ).graph
    graph_count = common.graph_flops(graph)["from_shapes"]
    return {
        "torch_flop_counter": torch_count,
        "graph_flops": graph_count,
        "graph_over_torch": graph_count / torch_count,
    }


# --- the benchmark ---------------------------------------------------------------------


def measure(fields, repeats, selected=None, warmup=1):
    """Times the selected steps (default: all) on one configuration, interleaved.

    Args:
        fields: `PretrainConfig` fields of the configuration (backbone, size, batch).
        selected: `selected("<variant>/<dtype>")` is True for the steps to run.
    """
    selected = selected or (lambda name: True)
    config_fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    steps, flops, counters, skipped, batch, config = {}, {}, {}, {}, None, None
    for variant, variant_fields in OURS.items():
        missing = sorted(set(variant_fields) - config_fields)
        if missing:
            skipped[variant] = f"PretrainConfig has no field {', '.join(missing)} yet"
            continue
        for mixed_precision, dtype in PRECISIONS.items():
            name = f"{variant}/{dtype}"
            if not selected(name):
                continue
            config, steps[name], batch, graph = common.traced_train_step(
                batch, mixed_precision=mixed_precision, **fields, **variant_fields
            )
            flops[name] = common.graph_flops(graph)["from_shapes"]
            counters[name] = "graph_flops"
    if config is None:
        config = PretrainConfig(**fields)
        batch = common.pipeline_batch(config)
    view1, view2 = torch_views(batch)
    for variant, variant_fields in PEER.items():
        peer = PeerDenseCL(
            config.backbone,
            batch_size=config.batch_size,
            queue_size=config.queue_size,
            temperature=config.temperature,
            ema_momentum=config.ema_momentum,
            embedding_dim=config.embedding_dim,
            **variant_fields,
        )
        for dtype in PRECISIONS.values():
            name = f"{variant}/{dtype}"
            if not selected(name):
                continue
            steps[name] = lambda peer=peer, dtype=dtype: peer(view1, view2, dtype)
            flops[name] = torch_flops(steps[name])
            counters[name] = "torch.utils.flop_counter.FlopCounterMode"
    times = common.time_interleaved(steps, warmup, repeats)

    results = {}
    for name in steps:
        step_s = times[name]["median_s"]
        results[name] = {
            "step_s": step_s,
            "images_per_s": config.batch_size / step_s,
            "images_per_s_min_based": config.batch_size / times[name]["min_s"],
            "step_flops": flops[name],
            "achieved_flops_per_s": flops[name] / step_s,
            "flop_counter": counters[name],
        }
    ours = [name for name in steps if not name.startswith("peer_")]
    peers = [name for name in steps if name.startswith("peer_")]
    over_peer = {
        our: {peer: results[our]["images_per_s"] / results[peer]["images_per_s"] for peer in peers}
        for our in ours
    }
    return {
        "config": common.config_summary(config),
        "steps": results,
        "images_per_s_over_peer": over_peer,
        "target": target_verdict(results, over_peer),
        "flop_counter_check": flop_counter_check(config.backbone, config.image_size),
        "skipped": skipped,
        "timing": times,
    }


def target_verdict(results, over_peer):
    """Our one-direction bfloat16 VADeR (or, until it exists, the symmetric one) against
    the peer's one-direction step in its faster precision, in images per second."""
    peer_steps = [name for name in results if name.startswith(f"{TARGET_PEER}/")]
    ours = TARGET_STEP if TARGET_STEP in results else STAND_IN_STEP
    if ours not in results or not peer_steps:
        return {"measured": False}
    fastest_peer = max(peer_steps, key=lambda name: results[name]["images_per_s"])
    return {"step": ours, "peer_step": fastest_peer, "ratio": over_peer[ours][fastest_peer]}


def run(quick):
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    torch.set_num_threads(THREADS)
    _, torchvision, _ = import_peer()
    import lightly

    results = {}
    for name, fields, repeats in cases(quick):
        results[name] = measure(fields, repeats, quick_selection if quick else None)
        if name in TARGET_RATIOS and results[name]["target"].get("ratio") is not None:
            results[name]["target"]["required"] = TARGET_RATIOS[name]
            results[name]["target"]["met"] = (
                results[name]["target"]["ratio"] >= TARGET_RATIOS[name]
            )
    config = {
        "cases": [name for name, _, _ in cases(quick)],
        "ours": OURS,
        "peer": PEER,
        "precisions": PRECISIONS,
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "tensorflow_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        },
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "torchvision_compiled_ops": bool(torchvision.extension._has_ops()),
            "lightly": lightly.__version__,
        },
        "target_ratios": TARGET_RATIOS,
    }
    return config, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
