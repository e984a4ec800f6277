"""routelab: diagnose and steer the routers of Mixture-of-Experts language models.

Usable from a notebook without DVC::

    from routelab.models import ModelSpec, load_model
    from routelab.routing import RoutingEdit, attach
    lm = load_model(ModelSpec(path="data/models/diffuse"))   # or a Hub id
    with attach(lm, record=True) as session:
        lm.model(**lm.tokenizer(["the doctor ."], return_tensors="pt"))
    session.records[0]  # per MoE layer call: logits, weights, top-k index
"""

# Before anything imports torch, numpy or pyarrow: one compute path on every x86-64 CPU (compute.py).
from routelab import compute as _compute

_compute.pin()

__version__ = "0.1.0"
