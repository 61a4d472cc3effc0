"""What tests and the demo may ask of a simulated pod (see assets/kwok.yaml).

KWOK runs no containers: a pod on a managed node becomes Running and Ready, and stays so
until one of these annotations (or labels) says how it ends. Set them on a pod template to
decide up front, or `kubectl annotate` a running pod to decide later.
"""

from __future__ import annotations

# "true": the pod's containers exit 0 and the pod Succeeds (a finished Job worker).
SIM_COMPLETE_ANNOTATION = "kubemaas.io/sim-complete"
# "true": the containers exit non-zero (SIM_EXIT_CODE_ANNOTATION, default 1) and the pod Fails.
SIM_FAIL_ANNOTATION = "kubemaas.io/sim-fail"
SIM_EXIT_CODE_ANNOTATION = "kubemaas.io/sim-exit-code"
# A Go duration ("2s") to wait before completing or failing.
SIM_DELAY_ANNOTATION = "kubemaas.io/sim-delay"
# A pod whose first container runs this image crash-loops from the start and never turns Ready
# (a broken revision): waiting CrashLoopBackOff, last exit 1 with a model-load message.
SIM_CRASHLOOP_IMAGE = "sim.kubemaas.io/crashloop:1"
