"""One cold start, in the fresh interpreter this script runs in (bench.worker imports its
:class:`LambdaContext`; nothing else imports it).

``python -P bench/probe.py <target> <result.json> [<invocation.json>]``: imports ``target`` (a
handler module, found on PYTHONPATH as Lambda finds it, or ``boto3`` alone), and for a handler
invokes its ``lambda_handler`` once, as Lambda's init and first invoke do, with the invocation
file's ``event`` and ``remaining_ms`` (the function's timeout). Nothing but
``sys`` and ``time`` is imported before the clock starts, so the handler pays for every module
it needs; writes the times, the peak memory (VmHWM) and a summary of the answer as JSON.
"""

import sys
import time

START_MARKER = "appauth-bench probe: clock started"


class LambdaContext:
    """The attributes of Lambda's context object the handlers and Powertools read."""

    function_name = "appauth-bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 256
    aws_request_id = "00000000-0000-4000-8000-000000000001"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:appauth-bench"
    log_group_name = "/aws/lambda/appauth-bench"
    log_stream_name = "bench"

    def __init__(self, remaining_ms: int) -> None:
        self._remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


def _summary(answer: object) -> dict[str, object]:
    """What the invocation did, without a token: enough to tell a realistic path from an error."""
    if not isinstance(answer, dict):
        return {"type": type(answer).__name__}
    keys = ("ok", "statusCode", "cache", "due", "rotated", "verified", "error")
    summary = {key: answer[key] for key in keys if key in answer and key != "error"}
    error = answer.get("error")
    if isinstance(error, dict):
        summary["error"] = error.get("code") or error.get("reason")
    return summary


def peak_rss_kib() -> int:
    """The process's peak resident set: VmHWM, which starts afresh with the program (ru_maxrss
    is carried over from the parent across fork and exec, so it reports the bench's own peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource  # noqa: PLC0415  (not Linux: the best there is)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    target, result_path = sys.argv[1], sys.argv[2]
    # Under -X importtime, what comes after this line is the handler's (not the interpreter's
    # own start-up, which the clock does not count either).
    sys.stderr.write(f"{START_MARKER}\n")
    sys.stderr.flush()
    started = time.perf_counter()
    module = __import__(target)
    imported = time.perf_counter()
    invoke_ms = None
    answer: object = None
    if len(sys.argv) > 3:
        import json  # noqa: PLC0415  (after the clock: the handler has imported it already)

        with open(sys.argv[3], encoding="utf-8") as handle:
            invocation = json.load(handle)
        context = LambdaContext(int(invocation["remaining_ms"]))
        invoked = time.perf_counter()
        answer = module.lambda_handler(invocation["event"], context)
        invoke_ms = (time.perf_counter() - invoked) * 1000
    import json  # noqa: PLC0415

    result = {
        "target": target,
        "import_ms": (imported - started) * 1000,
        "invoke_ms": invoke_ms,
        "maxrss_kib": peak_rss_kib(),
        "answer": _summary(answer),
        "modules": len(sys.modules),
    }
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
