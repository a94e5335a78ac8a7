"""The server interceptors every service runs, one concern each (services.common.server puts
them in order):

- drain.Drain: refuses calls UNAVAILABLE while the server drains before it stops;
- chain.Chain: the other concerns as one grpc interceptor, built once per method and cached;
- metrics.Metrics: media_rpc_* counts and unary latency;
- context.CallContext: the caller's trace continued in a SERVER span, the job_id in log lines;
- errors.Errors: RpcError/AuthError as their statuses, anything unexpected as INTERNAL;
- decode.Decode: requests that do not parse answered INVALID_ARGUMENT.
"""

from services.common.interceptors.chain import Chain, Interceptor, Method
from services.common.interceptors.context import CallContext
from services.common.interceptors.decode import Decode
from services.common.interceptors.drain import Drain
from services.common.interceptors.errors import Errors
from services.common.interceptors.metrics import Metrics

__all__ = [
    "CallContext",
    "Chain",
    "Decode",
    "Drain",
    "Errors",
    "Interceptor",
    "Method",
    "Metrics",
]
