"""The exception types the CLI turns into one line: bad input (exit 2) and a broken
harness (exit 1); the warning it prints as one line (a torn results file); and what
counts as running out of memory."""


class UsageError(Exception):
    """Bad input from the user: the CLI prints it on one line and exits with code 2."""


class HarnessError(Exception):
    """detcost cannot measure honestly here (a trial process started with CUDA already in
    use): the sweep stops at once; the CLI prints it on one line and exits with code 1."""


class TornRecordWarning(UserWarning):
    """A results file's last line was cut short (a write that never finished: a full disk,
    a power cut, a killed process); the records before it are read. The CLI prints it as
    one line."""


# Out of memory as torch, cuDNN and cuBLAS word it (cuDNN and cuBLAS fail to allocate their
# workspace rather than raise torch's OutOfMemoryError).
OOM_MARKS = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device (or the host) running out of memory."""
    named = type(exc).__name__ == "OutOfMemoryError"  # torch's, without importing torch here
    return named or isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in OOM_MARKS)
