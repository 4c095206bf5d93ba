"""fnsession: function sessions as first-class Kubernetes objects.

The operator (kopf) binds FunctionSession objects to instance pods of a Function; the gateway serves
Function Compute's session API and routes each session's requests to its pod.
"""

__version__ = "0.1.0.dev0"
