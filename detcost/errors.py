"""The one exception type that means "the user asked for something invalid"."""


class UsageError(Exception):
    """Bad input from the user: the CLI prints it on one line and exits with code 2."""


# Out of memory as torch, cuDNN and cuBLAS word it (cuDNN and cuBLAS fail to allocate their
# workspace rather than raise torch's OutOfMemoryError).
OOM_MARKS = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device (or the host) running out of memory."""
    named = type(exc).__name__ == "OutOfMemoryError"  # torch's, without importing torch here
    return named or isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in OOM_MARKS)
