"""media_rpc_*: every call counted by service, method and code when it ends (a stream when it
closes); unary calls timed as well."""

from __future__ import annotations

import time

import grpc

from services.common.interceptors.chain import Call, Context, Interceptor, Method, Request, Result
from services.common.interceptors.errors import code_of, code_returned
from services.common.metrics import RpcStats


class Metrics(Interceptor):
    def intercept(self, method: Method, call: Call) -> Call:
        # Streams last as long as their watchers: their latency would say nothing.
        stats = RpcStats(method.service, method.name, timed=not method.streaming)

        async def counted(request: Request, context: Context) -> Result:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await call(request, context)
            except BaseException as exc:
                code = code_of(exc, context)
                raise
            finally:
                if code is grpc.StatusCode.OK:
                    code = code_returned(context)
                stats.done(code, time.perf_counter() - started)

        return counted
