"""The `vader-pretrain` command, signalling itself at a given step (run by test_preemption.py).

Usage: python preemption_main.py SIGNAL STEP AGAIN [PRETRAIN FLAGS...]

SIGNAL (TERM, INT or none) is sent to this process once step STEP is done, as the loop
reads its metrics (a deterministic stand-in for a scheduler's signal at that moment). With
AGAIN = `again`, the same signal is sent a second time during the checkpoint save that
follows, between writing the checkpoint and recording it in the `checkpoint` state file
(after TensorFlow wrote the state file's temporary copy, before renaming it): the moment
a kill is most likely to leave something half-written. A worker of a cluster (TF_CONFIG
set) then waits 3 s, so that the cluster stops at the next step on any machine.
"""

import os
import signal
import sys
import time

from tensorflow.python.lib.io import file_io

from vader_tf.scripts import pretrain as pretrain_script
from vader_tf.training import summaries


def main(signal_name, step, again, *flags):
    step = int(step)
    if signal_name != "none":
        signum = getattr(signal, f"SIG{signal_name}")
        write = summaries.maybe_write
        rename = file_io.rename
        sent = []

        def signal_at_step(image_summaries, model, current, *args, **kwargs):
            write(image_summaries, model, current, *args, **kwargs)
            if current == step and not sent:
                sent.append(current)
                os.kill(os.getpid(), signum)
                if "TF_CONFIG" in os.environ:
                    # PreemptionCheckpointHandler polls for the signal once a second: let it
                    # see it before this worker's next chunk, whatever the machine's speed.
                    time.sleep(3)

        def signal_again_before_rename(old, new, overwrite=False):
            if sent and os.path.basename(new) == "checkpoint":
                os.kill(os.getpid(), signum)
            return rename(old, new, overwrite)

        summaries.maybe_write = signal_at_step
        if again == "again":
            file_io.rename = signal_again_before_rename
    sys.argv = [sys.argv[0], *flags]
    pretrain_script.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
