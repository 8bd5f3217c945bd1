"""What a backend needs to plug into the HAEPO objective written once in ``haepo_core``.

A backend reduces its inputs to per-trajectory sums and calls :func:`objective` with its
:class:`Primitives` (segment ops, cross-device reductions, the policy term with its custom
backward, the KL-estimate sum); it validates a call with the ``validate_*`` functions and
:class:`CheckHooks` (its concreteness test, its finite check, or a deferred finite check from
sums, :func:`check_finite_from_sums`); its entry points' docstrings share the argument text
of :func:`fill_doc`. See docs/spec.md, "Writing a backend".
"""

from . import _inputs, _objective, _validation
from ._docs import fill_doc
from ._inputs import *  # noqa: F403
from ._namespace import compute_dtype, is_concrete, stop_gradient, values_readable
from ._objective import *  # noqa: F403
from ._validation import *  # noqa: F403

__all__ = [
    *_inputs.__all__,
    *_objective.__all__,
    *_validation.__all__,
    "compute_dtype",
    "fill_doc",
    "is_concrete",
    "stop_gradient",
    "values_readable",
]
